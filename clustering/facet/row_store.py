"""``RowStore``: rows of a feature array served to the device by id, whole on the device or read on demand."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class RowStore:
    """Rows of a 2-D array served to the device by id: a tensor (on the device, or sharing a host
    array on the CPU), or a host (memory-mapped) array gathered row by row for each request."""

    def __init__(self, rows: Tensor | np.ndarray, device: torch.device) -> None:
        self.rows = rows
        self.device = device

    @classmethod
    def place(cls, array: np.ndarray, device: torch.device, on_device: bool) -> RowStore:
        """On the CPU: the array itself as a tensor (no copy unless it is not float32), or gathered
        from a memory map. On a GPU: copied there when ``on_device`` (``clustering.placement``), else
        gathered from the host."""
        if device.type == "cpu" and not isinstance(array, np.memmap):
            return cls(torch.as_tensor(np.asarray(array, dtype=np.float32)), device)
        if device.type != "cpu" and on_device:
            return cls(torch.as_tensor(np.asarray(array, dtype=np.float32)).to(device), device)
        return cls(array, device)

    def __getitem__(self, ids: Tensor) -> Tensor:
        if isinstance(self.rows, Tensor):
            if self.rows.device == ids.device:
                return self.rows[ids]
            return self.rows[ids.to(self.rows.device)].to(self.device)  # a host tensor serving a GPU
        rows = np.asarray(self.rows[ids.cpu().numpy()], dtype=np.float32)
        return torch.from_numpy(rows).to(self.device)
