"""MegaFace-style recognition evaluation: identification with distractors (rank-1, CMC), verification
(TAR at FAR), identity-overlap guard, tables and plots. Independent of Prefect.

Entry points: ``identification.identification_cmc``, ``verification.verification_tar``,
``overlap.check_identity_overlap``, ``report.evaluate``, ``report.compare``;
CLIs ``python -m recognition_eval`` and ``python -m recognition_eval.compare``.
"""
