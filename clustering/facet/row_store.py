"""``RowStore``: rows of a feature array served to the device by id, whole on the device or read on demand."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class RowStore:
    """Rows of a 2-D array served to the device by id: a device tensor, or a (memory-mapped) array."""

    def __init__(self, rows: Tensor | np.ndarray, device: torch.device) -> None:
        self.rows = rows
        self.device = device

    @classmethod
    def from_array(cls, array: np.ndarray, device: torch.device, max_bytes: int) -> RowStore:
        """Copy to the device when it fits in ``max_bytes``, else read rows on demand."""
        if array.nbytes <= max_bytes:
            return cls(torch.as_tensor(np.asarray(array, dtype=np.float32)).to(device), device)
        return cls(array, device)

    def __getitem__(self, ids: Tensor) -> Tensor:
        if isinstance(self.rows, Tensor):
            return self.rows[ids]
        rows = np.asarray(self.rows[ids.cpu().numpy()], dtype=np.float32)
        return torch.from_numpy(rows).to(self.device)
