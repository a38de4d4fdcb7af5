"""Data layer: generated demo faces, image-folder and manifest readers, MXNet RecordIO without mxnet.

Modules: ``demo_faces`` (synthetic identities), ``images`` (decoding), ``folder`` (scan an identity
folder tree), ``dataset`` (torch Dataset over a manifest), ``recordio`` (InsightFace ``.rec``/``.idx``),
``recordio_cli`` (converter). ``scan_image_folder`` and ``ManifestImageDataset`` are exported here but
imported on first use, so ``import backbone.data`` stays light (no torch, no OpenCV).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "scan_image_folder": "backbone.data.folder",
    "CorruptImagesError": "backbone.data.folder",
    "ManifestImageDataset": "backbone.data.dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'backbone.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
