"""Fixed-bin histogram of cosine scores on [-1, 1], accumulated on the scoring device.

Verification over 3,530 probes x 1M distractors has 3.5e9 negative scores: a list of them would not
fit in memory, and TAR at FAR only needs how many scores lie above each threshold. 2**20 bins give a
threshold resolution of 1.9e-6 in cosine; counts are exact int64.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_BINS = 1 << 20


class ScoreHistogram:
    """Counts of scores per bin; bin i holds scores in [-1 + i w, -1 + (i + 1) w), w = 2 / bins.

    Scores outside [-1, 1] (float rounding) fall in the first or last bin.
    """

    def __init__(self, bins: int = DEFAULT_BINS, device: torch.device | str = "cpu") -> None:
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.int64, device=device)

    @property
    def width(self) -> float:
        return 2.0 / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add_(self, scores: torch.Tensor) -> None:
        """Count ``scores`` (any shape). Overwrites ``scores`` in place to save memory."""
        if scores.numel() == 0:
            return
        index = scores.add_(1.0).mul_(self.bins / 2.0).to(torch.int32).clamp_(0, self.bins - 1)
        self.counts += torch.bincount(index.reshape(-1), minlength=self.bins)

    def at_or_above(self) -> np.ndarray:
        """int64 [bins + 1]: entry i = number of scores in bins >= i (scores >= lower edge of bin i)."""
        counts = self.counts.cpu().numpy()
        out = np.zeros(self.bins + 1, dtype=np.int64)
        out[:-1] = np.cumsum(counts[::-1])[::-1]
        return out

    def lower_edge(self, index: np.ndarray | int) -> np.ndarray:
        """Score at the lower edge of bin ``index`` (index == bins: above every score)."""
        return -1.0 + np.asarray(index, dtype=np.float64) * self.width
