"""kNN graphs in the public benchmark layouts, read into and written from ``KnnGraph``.

* learn-to-cluster (``knns/<split>/faiss_k_80.npz``): array ``data`` of shape (N, 2, k), row 0 the
  neighbour ids, row 1 the cosine distance ``1 - sim`` in ascending order.
* L-GCN IJB-B (``knn.graph.*.npy``): int array (N, k) of neighbour ids with the query in column 0;
  similarities are recomputed from the features.

No library reads these formats (they are .npz/.npy files written by the benchmarks' own scripts),
so the few lines of parsing and validation live here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clustering.knn import KnnGraph
from semiface.atomic import save_npz
from semiface.errors import DataError
from semiface.features import check_features, l2_normalize


def read_ltc_knn(path: str | Path) -> KnnGraph:
    """Read a learn-to-cluster ``faiss_k_*.npz``; rows re-sorted by similarity, self first."""
    path = Path(path)
    data = _load_array(path, key="data")
    if data.ndim != 3 or data.shape[1] != 2:
        raise DataError(path, f"array 'data' must have shape (N, 2, k), got {data.shape}")
    ids, dists = data[:, 0, :], data[:, 1, :].astype(np.float32)
    nbrs = _checked_ids(path, ids, len(data))
    if not np.isfinite(dists).all():
        raise DataError(path, "distances contain NaN or infinity")
    return _canonical(path, nbrs, 1.0 - dists)


def write_ltc_knn(graph: KnnGraph, path: str | Path) -> Path:
    """Write ``graph`` as a learn-to-cluster ``faiss_k_*.npz`` (ids and 1 - sim as float32)."""
    data = np.stack([graph.nbrs.astype(np.float32), 1.0 - graph.sims.astype(np.float32)], axis=1)
    return save_npz(path, data=data)


def read_lgcn_knn(path: str | Path, features: np.ndarray) -> KnnGraph:
    """Read an L-GCN ``knn.graph.*.npy`` (neighbour ids, query in column 0); sims from ``features``."""
    path = Path(path)
    ids = _load_array(path)
    if ids.ndim != 2:
        raise DataError(path, f"kNN graph must be 2-D (N, k), got shape {ids.shape}")
    if len(ids) != len(features):
        raise DataError(path, f"kNN graph has {len(ids)} rows but there are {len(features)} feature rows")
    check_features(features, path)
    nbrs = _checked_ids(path, ids, len(ids))
    unit = l2_normalize(np.asarray(features, dtype=np.float32))
    sims = np.einsum("nd,nkd->nk", unit, unit[nbrs])
    return _canonical(path, nbrs, sims)


def _load_array(path: Path, key: str | None = None) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "kNN file not found")
    try:
        if key is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive:
                raise DataError(path, f"lacks array {key!r} (has {', '.join(archive.files) or 'none'})")
            return archive[key]
    except (ValueError, OSError) as exc:
        raise DataError(path, f"not a readable numpy file ({exc})") from exc


def _checked_ids(path: Path, ids: np.ndarray, n: int) -> np.ndarray:
    if not np.isfinite(ids).all() or (ids != np.round(ids)).any():
        raise DataError(path, "neighbour ids must be whole numbers")
    nbrs = ids.astype(np.int64)
    bad = (nbrs < 0) | (nbrs >= n)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(path, f"row {row}: neighbour id outside 0..{n - 1} ({int(nbrs[row][bad[row]][0])})")
    return nbrs


def _canonical(path: Path, nbrs: np.ndarray, sims: np.ndarray) -> KnnGraph:
    """Sort each row by decreasing similarity, then move the query itself to column 0."""
    order = np.argsort(-sims, axis=1, kind="stable")
    nbrs, sims = np.take_along_axis(nbrs, order, 1), np.take_along_axis(sims, order, 1).astype(np.float32)
    is_self = nbrs == np.arange(len(nbrs))[:, None]
    missing = ~is_self.any(axis=1)
    if missing.any():
        raise DataError(path, f"{int(missing.sum())} rows lack the query itself (first: row {int(np.argmax(missing))})")
    position = is_self.argmax(axis=1)
    for row in np.flatnonzero(position > 0):  # rare: a duplicate image ranked before the query
        p = position[row]
        nbrs[row, : p + 1] = np.roll(nbrs[row, : p + 1], 1)
        sims[row, : p + 1] = np.roll(sims[row, : p + 1], 1)
    return KnnGraph(nbrs=nbrs, sims=sims)
