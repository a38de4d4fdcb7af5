"""kNN graph of L2-normalised features (cosine similarity), the input of every clustering method.

``KnnGraph``: ``nbrs`` int64 [N, k] and ``sims`` float32 [N, k], each row sorted by decreasing
similarity with the query itself first; saved as ``knn.npz``. ``build_knn`` computes it with faiss,
or with exact torch search on CUDA when no working GPU faiss is installed
(``semiface.faiss_backend.knn_backend``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clustering.torch_knn import torch_exact_knn
from semiface.atomic import save_npz
from semiface.devices import resolve_device
from semiface.errors import ConfigError, DataError
from semiface.faiss_backend import import_faiss, knn_backend
from semiface.features import check_features, l2_normalize

log = logging.getLogger(__name__)

# Train the IVF coarse quantizer on at most this many points per list (faiss warns below 39).
_IVF_TRAIN_POINTS_PER_LIST = 64
# GPU faiss refuses nprobe above this (CUDA top-k limit); IVF re-searches are capped at it.
GPU_MAX_NPROBE = 2048


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

    def edges(self, k: int | None = None, min_sim: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Directed edges (query, neighbour, similarity) over the first ``k`` neighbours, self excluded.

        ``k`` counts the query itself (as ``build_knn``'s ``k`` does); ``min_sim`` keeps only edges
        with similarity strictly above it.
        """
        k = self.k if k is None else k
        if not 1 <= k <= self.k:
            raise ConfigError(f"knn edges: k={k} must be between 1 and the graph's k={self.k}")
        nbrs, sims = self.nbrs[:, :k], self.sims[:, :k]
        src = np.repeat(np.arange(self.n, dtype=np.int64), k)
        dst, w = nbrs.reshape(-1), sims.reshape(-1)
        keep = src != dst
        if min_sim is not None:
            keep &= w > min_sim
        return src[keep], dst[keep], w[keep]


def build_knn(
    features: np.ndarray,
    k: int,
    *,
    exact_threshold: int = 200_000,
    nprobe: int = 32,
    nlist: int | None = None,
    chunk_size: int = 65_536,
    device: str = "auto",
    progress: Callable[[float], None] | None = None,
) -> KnnGraph:
    """Cosine kNN graph (``k`` neighbours including the query itself) of ``features`` [N, D].

    Rows are L2-normalised here chunk by chunk (the input, which may be a memory map, is never
    copied whole nor modified). N < ``exact_threshold``: exact inner-product search
    (``IndexFlatIP``); otherwise IVF-Flat with ``nlist`` lists (default ~4 sqrt(N)) searched over
    ``nprobe`` lists, the recall knob. On CUDA (``device`` ``auto``/``cuda``/``cuda:N`` with a GPU in
    torch) the search runs on that GPU: with faiss when a working GPU build is installed, else
    exact on torch at any N (``clustering.torch_knn``); otherwise with faiss on the CPU.

    Peak memory, beyond the input: the index (N*D*4 bytes; IVF adds 8 bytes a row) + the result
    (N*k*12 bytes) + one query chunk (``chunk_size``*(D + 2k)*4 bytes, ~100 MB for the defaults
    with D=256, k=80) + faiss's fixed search blocks (~16 MB on CPU).

    Rows are sorted by decreasing similarity; column 0 is always the query itself with similarity
    1.0 (an exact duplicate that ties with it comes second); similarities are clipped to [-1, 1].
    Raises DataError for NaN/inf or zero-norm rows and for k > N. ``progress`` is told the percentage
    of queries searched after each chunk.
    """
    check_features(features, "features")
    n, dim = features.shape
    if k < 1:
        raise ConfigError(f"build_knn: k must be >= 1, got {k}")
    if k > n:
        raise DataError("features", f"k={k} neighbours asked for but there are only N={n} rows")
    if chunk_size < 1:
        raise ConfigError(f"build_knn: chunk_size must be >= 1, got {chunk_size}")
    backend = knn_backend(device)
    if backend == "torch-cuda":
        nbrs, sims = torch_exact_knn(features, k, _cuda_device(device), progress=progress)
        nbrs, sims = _put_self_first(nbrs, sims, np.arange(n))
        return KnnGraph(nbrs=nbrs, sims=sims)
    faiss = import_faiss()
    gpu = _cuda_device(device).index if backend == "faiss-gpu" else None
    exact = n < exact_threshold
    index = _flat_index(faiss, dim, gpu) if exact else _ivf_index(faiss, features, nlist, nprobe, gpu)
    for start in range(0, n, chunk_size):
        index.add(_normalised_rows(features, start, chunk_size))

    nbrs = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    max_nprobe = GPU_MAX_NPROBE if gpu is not None else None
    for start in range(0, n, chunk_size):
        queries = _normalised_rows(features, start, chunk_size)
        chunk_sims, chunk_nbrs = index.search(queries, k)
        if not exact:
            _research_incomplete_rows(index, queries, chunk_sims, chunk_nbrs, max_nprobe)
        stop = start + len(queries)
        nbrs[start:stop], sims[start:stop] = _put_self_first(chunk_nbrs, chunk_sims, np.arange(start, stop))
        if progress is not None:
            progress(100.0 * stop / n)
    return KnnGraph(nbrs=nbrs, sims=sims)


def _cuda_device(device: str) -> torch.device:
    """The CUDA device ``device`` names (``auto``/``cuda`` = the current one)."""
    resolved = resolve_device("cuda" if device == "auto" else device)
    return resolved if resolved.index is not None else torch.device("cuda", torch.cuda.current_device())


def _to_gpu(faiss, index, gpu: int | None):
    return index if gpu is None else faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index)


def _flat_index(faiss, dim: int, gpu: int | None):
    return _to_gpu(faiss, faiss.IndexFlatIP(dim), gpu)


def _ivf_index(faiss, features: np.ndarray, nlist: int | None, nprobe: int, gpu: int | None):
    n, dim = features.shape
    if nlist is None:
        nlist = int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))
    if not 1 <= nlist <= n:
        raise ConfigError(f"build_knn: nlist={nlist} must be between 1 and N={n}")
    if nprobe < 1:
        raise ConfigError(f"build_knn: nprobe must be >= 1, got {nprobe}")
    index = _to_gpu(faiss, faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT), gpu)
    n_train = min(n, _IVF_TRAIN_POINTS_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(0).choice(n, size=n_train, replace=False))
    index.train(l2_normalize(features[rows]))
    index.nprobe = min(nprobe, nlist, GPU_MAX_NPROBE if gpu is not None else nlist)  # IndexIVF and GpuIndexIVF share it
    return index


def _normalised_rows(features: np.ndarray, start: int, chunk_size: int) -> np.ndarray:
    return np.ascontiguousarray(l2_normalize(features[start : start + chunk_size]))


def _research_incomplete_rows(
    index, queries: np.ndarray, sims: np.ndarray, nbrs: np.ndarray, max_nprobe: int | None = None
) -> None:
    """IVF returns id -1 when the probed lists hold fewer than k points: search those rows again over
    every list, or over ``max_nprobe`` lists where the index refuses more (GPU faiss: 2048)."""
    short = np.flatnonzero((nbrs < 0).any(axis=1))
    if len(short) == 0:
        return
    saved = index.nprobe
    index.nprobe = index.nlist if max_nprobe is None else min(index.nlist, max_nprobe)
    try:
        sims[short], nbrs[short] = index.search(queries[short], nbrs.shape[1])
    finally:
        index.nprobe = saved


def _put_self_first(nbrs: np.ndarray, sims: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each query to column 0 with similarity 1.0, keeping the order of the others.

    A duplicate of the query ties with it and may come first; with approximate search or more
    than k duplicates the query may be missing, and then replaces the last neighbour.
    """
    sims = np.clip(sims, -1.0, 1.0)
    is_self = nbrs == rows[:, None]
    missing = ~is_self.any(axis=1)
    nbrs[missing, -1] = rows[missing]
    is_self[missing, -1] = True
    bad = np.flatnonzero(~is_self[:, 0])
    if len(bad):
        order = np.argsort(~is_self[bad], axis=1, kind="stable")
        nbrs[bad] = np.take_along_axis(nbrs[bad], order, axis=1)
        sims[bad] = np.take_along_axis(sims[bad], order, axis=1)
    sims[:, 0] = 1.0
    return nbrs, sims
