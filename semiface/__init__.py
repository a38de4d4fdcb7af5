"""Shared helpers of semiface: errors, atomic writes, devices, manifests, feature files.

The layers above (backbone, clustering, recognition_eval, tasks, flows) import from here;
nothing here imports from them or from prefect.
"""
