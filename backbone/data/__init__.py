"""Data layer: generated demo faces, image-folder and manifest readers, MXNet RecordIO without mxnet.

Modules: ``demo_faces`` (synthetic identities), ``images`` (decoding), ``folder`` (scan an identity
folder tree), ``dataset`` (torch Dataset over a manifest), ``recordio`` (InsightFace ``.rec``/``.idx``),
``recordio_cli`` (converter). Import from the modules; this package imports nothing heavy on purpose.
"""
