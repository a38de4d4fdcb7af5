"""The images of manifest rows, from an image folder or an InsightFace RecordIO file.

:class:`FolderImages` and :class:`RecordImages` give each row's encoded bytes (and decoded pixels) with a
name for errors; they need numpy alone, so a script on a bare GPU host can build them from arrays, and
they pickle into data-loading workers. :func:`manifest_images` builds one from a manifest.
:class:`ManifestImageDataset` is the item-by-item torch Dataset over them (float CHW tensors); the
training and extraction batches come from ``backbone.loader``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from backbone.data.images import decode_image, read_bytes, resize_square
from semiface.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from backbone.data.recordio import RecordIOReader

Transform = Callable[[np.ndarray], torch.Tensor]


class FolderImages:
    """Image files ``paths`` (relative to ``root``; absolute paths are used as they are)."""

    def __init__(self, paths: np.ndarray, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise DataError(self.root, "image root folder not found")
        # fixed-width unicode, not a list of str: workers touching it do not copy it page by page
        self.paths = np.asarray(paths).astype(np.str_)

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, index: int) -> Path:
        path = Path(str(self.paths[index]))
        return path if self.root is None or path.is_absolute() else self.root / path

    def encoded(self, index: int) -> bytes:
        return read_bytes(self.source(index))

    def read(self, index: int) -> np.ndarray:
        """The decoded RGB uint8 HWC image of row ``index``."""
        return decode_image(self.encoded(index), self.source(index))


class RecordImages:
    """Records ``keys`` of a RecordIO file (pread-based reader: picklable, fine in workers)."""

    def __init__(self, reader: RecordIOReader, keys: np.ndarray) -> None:
        self.reader, self.keys = reader, np.asarray(keys, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def source(self, index: int) -> str:
        return self.reader.where(int(self.keys[index]))

    def encoded(self, index: int) -> bytes:
        return self.reader.read_encoded(int(self.keys[index]))

    def read(self, index: int) -> np.ndarray:
        return self.reader.read_image(int(self.keys[index]))


Images = FolderImages | RecordImages


def manifest_images(manifest: pd.DataFrame, root: str | Path | None, record_file: str | Path | None = None) -> Images:
    """The images of a (validated) manifest's rows: its ``path`` column read under ``root``, or with
    ``record_file`` (an InsightFace ``train.rec`` beside its ``train.idx``) its ``rec_index`` column."""
    if record_file is not None:
        if "rec_index" not in manifest.columns:
            raise DataError("manifest", f"column 'rec_index' is required to read from {record_file}")
        from backbone.data.recordio import RecordIOReader

        return RecordImages(RecordIOReader(record_file), manifest["rec_index"].to_numpy(np.int64))
    if "path" not in manifest.columns:
        raise DataError("manifest", "column 'path' is required to read an image folder")
    return FolderImages(manifest["path"].astype(str).to_numpy(), root)


def to_tensor(image: np.ndarray, image_size: int) -> torch.Tensor:
    """The default transform: resize to ``image_size`` square, float32 CHW in [-1, 1] (the model's input,
    made by the same function as the batches': ``backbone.model_input.normalise``)."""
    from backbone.model_input import normalise

    resized = np.ascontiguousarray(resize_square(image, image_size))
    return normalise(torch.from_numpy(resized)[None].permute(0, 3, 1, 2))[0]


class ManifestImageDataset(Dataset):
    """Items ``(image, label, row_index)`` for each manifest row, in manifest order.

    Without ``record_file`` the manifest needs a ``path`` column, read relative to ``root`` (absolute
    paths are used as they are). With ``record_file`` (an InsightFace ``train.rec`` beside its
    ``train.idx``) it needs a ``rec_index`` column and ``root`` is ignored. ``transform`` maps an RGB
    uint8 HWC array to a float CHW tensor; without one the image is resized to ``image_size`` and
    scaled to [-1, 1]. The label is the manifest's (-1 for unlabelled rows). A missing or corrupt
    image raises :class:`DataError` naming the file (or the record file, key and offset) and the row.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path | None,
        transform: Transform | None = None,
        image_size: int = 112,
        record_file: str | Path | None = None,
    ) -> None:
        from semiface.manifest import validate_manifest

        manifest = validate_manifest(manifest, "manifest")
        self.labels = manifest["label"].to_numpy(np.int64)
        self.transform = transform
        self.image_size = image_size
        self.images = manifest_images(manifest, root if record_file is None else None, record_file)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        index = int(index)
        image = self.read(index)
        tensor = self.transform(image) if self.transform is not None else to_tensor(image, self.image_size)
        return tensor, int(self.labels[index]), index

    def read(self, index: int) -> np.ndarray:
        """The decoded RGB uint8 HWC image of row ``index`` (no transform)."""
        return self.images.read(int(index))
