"""A torch Dataset over a manifest: images from an image folder or from an InsightFace RecordIO file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from backbone.data.images import read_image, resize_square
from semiface.errors import DataError
from semiface.manifest import validate_manifest

Transform = Callable[[np.ndarray], torch.Tensor]


def to_tensor(image: np.ndarray, image_size: int) -> torch.Tensor:
    """The default transform: resize to ``image_size`` square, float32 CHW in [-1, 1] (the model's input)."""
    resized = resize_square(image, image_size)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


class ManifestImageDataset(Dataset):
    """Items ``(image, label, row_index)`` for each manifest row, in manifest order.

    Without ``record_file`` the manifest needs a ``path`` column, read relative to ``root`` (absolute
    paths are used as they are). With ``record_file`` (an InsightFace ``train.rec`` beside its
    ``train.idx``) it needs a ``rec_index`` column and ``root`` is ignored. ``transform`` maps an RGB
    uint8 HWC array to a float CHW tensor; without one the image is resized to ``image_size`` and
    scaled to [-1, 1]. The label is the manifest's (-1 for unlabelled rows). A missing or corrupt
    image raises :class:`DataError` naming the file (or the record file and index) and the row.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path | None,
        transform: Transform | None = None,
        image_size: int = 112,
        record_file: str | Path | None = None,
    ) -> None:
        manifest = validate_manifest(manifest, "manifest")
        self.labels = manifest["label"].to_numpy(np.int64)
        self.transform = transform
        self.image_size = image_size
        self.record_file = Path(record_file) if record_file is not None else None
        if self.record_file is not None:
            if "rec_index" not in manifest.columns:
                raise DataError("manifest", f"column 'rec_index' is required to read from {self.record_file}")
            from backbone.data.recordio import RecordIOReader

            self.reader = RecordIOReader(self.record_file)  # pread-based and picklable: fine in workers
            self.rec_index = manifest["rec_index"].to_numpy(np.int64)
            self.root = None
        else:
            if "path" not in manifest.columns:
                raise DataError("manifest", "column 'path' is required to read an image folder")
            self.root = Path(root) if root is not None else None
            if self.root is not None and not self.root.is_dir():
                raise DataError(self.root, "image root folder not found")
            # fixed-width unicode, not a list of str: workers touching it do not copy it page by page
            self.paths = manifest["path"].astype(str).to_numpy().astype(np.str_)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        index = int(index)
        image = self.read(index)
        tensor = self.transform(image) if self.transform is not None else to_tensor(image, self.image_size)
        return tensor, int(self.labels[index]), index

    def read(self, index: int) -> np.ndarray:
        """The decoded RGB uint8 HWC image of row ``index`` (no transform)."""
        if self.record_file is None:
            path = Path(str(self.paths[index]))
            return read_image(path if self.root is None or path.is_absolute() else self.root / path)
        return self.reader.read_image(int(self.rec_index[index]))
