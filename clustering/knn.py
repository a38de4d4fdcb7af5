"""kNN graph of L2-normalised features (cosine similarity), the input of every clustering method.

``KnnGraph``: ``nbrs`` int64 [N, k] and ``sims`` float32 [N, k], each row sorted by decreasing
similarity with the query itself first; saved as ``knn.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiface.atomic import save_npz
from semiface.errors import DataError


@dataclass(frozen=True)
class KnnGraph:
    """Neighbour ids and cosine similarities, rows sorted by similarity, self first."""

    nbrs: np.ndarray
    sims: np.ndarray

    def __post_init__(self) -> None:
        if self.nbrs.shape != self.sims.shape or self.nbrs.ndim != 2:
            raise DataError("knn", f"nbrs {self.nbrs.shape} and sims {self.sims.shape} must be equal 2-D shapes")

    @property
    def n(self) -> int:
        return self.nbrs.shape[0]

    @property
    def k(self) -> int:
        return self.nbrs.shape[1]

    def save(self, path: str | Path) -> Path:
        """Write ``knn.npz`` atomically."""
        return save_npz(path, nbrs=self.nbrs, sims=self.sims)

    @classmethod
    def load(cls, path: str | Path) -> KnnGraph:
        """Read ``knn.npz``; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "kNN file not found")
        try:
            with np.load(path) as data:
                return cls(nbrs=data["nbrs"].astype(np.int64, copy=False), sims=data["sims"].astype(np.float32, copy=False))
        except KeyError as exc:
            raise DataError(path, f"kNN file lacks array {exc}") from exc
