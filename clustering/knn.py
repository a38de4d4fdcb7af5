"""kNN graph of L2-normalised features (cosine similarity), the input of every clustering method.

``KnnGraph``: ``nbrs`` [N, k] (int32 below 2^31 rows, int64 beyond: ``id_dtype``) and ``sims``
float32 [N, k], each row sorted by decreasing similarity with the query itself first; saved as
``knn.npz`` with the similarities in float16 (half the bytes; read back as float32, within 5e-4).
``build_knn`` computes it with faiss, or with exact torch search on CUDA when no working GPU faiss is
installed (``semiface.faiss_backend.knn_backend``).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clustering.ivf_cpu import default_nlist, ivf_self_knn, train_ivf
from clustering.node_ids import id_dtype
from clustering.torch_knn import torch_exact_knn
from semiface.atomic import atomic_open
from semiface.devices import resolve_device
from semiface.errors import ConfigError, DataError
from semiface.faiss_backend import import_faiss, knn_backend
from semiface.features import check_features, l2_normalize

log = logging.getLogger(__name__)

# GPU faiss refuses nprobe above this (CUDA top-k limit); IVF re-searches are capped at it.
GPU_MAX_NPROBE = 2048
# Rows per step where a whole-graph pass would otherwise allocate [N, k] temporaries.
ROW_CHUNK = 65_536
# Similarities on disk: float16 keeps 11 significant bits (an error under 5e-4 on [-1, 1]).
DISK_SIMS = np.float16


@dataclass(frozen=True)
class KnnGraph:
    """Neighbour ids and cosine similarities, rows sorted by similarity, self first."""

    nbrs: np.ndarray
    sims: np.ndarray

    def __post_init__(self) -> None:
        if self.nbrs.shape != self.sims.shape or self.nbrs.ndim != 2:
            raise DataError("knn", f"nbrs {self.nbrs.shape} and sims {self.sims.shape} must be equal 2-D shapes")
        if not np.issubdtype(self.nbrs.dtype, np.integer):
            raise DataError("knn", f"neighbour ids must be integers, got {self.nbrs.dtype}")

    @property
    def n(self) -> int:
        return self.nbrs.shape[0]

    @property
    def k(self) -> int:
        return self.nbrs.shape[1]

    def save(self, path: str | Path) -> Path:
        """Write ``knn.npz`` atomically: ids as ``id_dtype(N)``, similarities as float16, converted
        chunk by chunk (no whole-graph copy)."""
        arrays = {"nbrs": (self.nbrs, id_dtype(self.n)), "sims": (self.sims, np.dtype(DISK_SIMS))}
        with atomic_open(path) as handle, zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED) as archive:
            for name, (array, dtype) in arrays.items():
                with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(
                        member, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": array.shape})
                    for start in range(0, len(array), ROW_CHUNK):
                        member.write(np.ascontiguousarray(array[start : start + ROW_CHUNK], dtype=dtype).tobytes())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> KnnGraph:
        """Read ``knn.npz`` (ids as ``id_dtype(N)``, similarities as float32); errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "kNN file not found")
        try:
            with np.load(path) as data:
                nbrs = data["nbrs"]
                nbrs = nbrs.astype(id_dtype(len(nbrs)), copy=False)
                return cls(nbrs=nbrs, sims=data["sims"].astype(np.float32, copy=False))
        except KeyError as exc:
            raise DataError(path, f"kNN file lacks array {exc}") from exc
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(path, f"not a readable kNN file ({exc})") from exc

    def edges(self, k: int | None = None, min_sim: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Directed edges (query, neighbour, similarity) over the first ``k`` neighbours, self and
        padding (-1) excluded; ids as ``id_dtype(N)``, similarities float32.

        ``k`` counts the query itself (as ``build_knn``'s ``k`` does); ``min_sim`` keeps only edges
        with similarity strictly above it. Filtered chunk by chunk: only the kept edges are ever held.
        """
        k = self.k if k is None else k
        if not 1 <= k <= self.k:
            raise ConfigError(f"knn edges: k={k} must be between 1 and the graph's k={self.k}")
        ids = id_dtype(self.n)
        parts = []
        for start in range(0, self.n, ROW_CHUNK):
            stop = min(start + ROW_CHUNK, self.n)
            dst = self.nbrs[start:stop, :k].astype(ids, copy=False).reshape(-1)
            w = self.sims[start:stop, :k].astype(np.float32, copy=False).reshape(-1)
            src = np.repeat(np.arange(start, stop, dtype=ids), k)
            keep = (src != dst) & (dst >= 0)
            if min_sim is not None:
                keep &= w > min_sim
            parts.append((src[keep], dst[keep], w[keep]))
        if not parts:
            return np.empty(0, ids), np.empty(0, ids), np.empty(0, np.float32)
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def self_first_view(nbrs: np.ndarray, width: int) -> np.ndarray | None:
    """``nbrs[:, :width]`` (a view, no copy) when every row lists itself first, nowhere else in those
    columns, and no -1 there: the layout ``build_knn`` writes. None otherwise (the caller compacts)."""
    if width > nbrs.shape[1]:
        return None
    for start in range(0, len(nbrs), ROW_CHUNK):
        block = nbrs[start : start + ROW_CHUNK, :width]
        own = np.arange(start, start + len(block), dtype=block.dtype)[:, None]
        if (block[:, :1] != own).any() or (block[:, 1:] == own).any() or (block[:, 1:] < 0).any():
            return None
    return nbrs[:, :width]


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
    (N*k*8 bytes: int32 ids below 2^31 rows, float32 similarities) + one query chunk (``chunk_size``*(D + 2k)*4 bytes, ~100 MB for the defaults
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
    nbrs = np.empty((n, k), dtype=id_dtype(n))
    sims = np.empty((n, k), dtype=np.float32)
    for start, chunk_nbrs, chunk_sims in _search_chunks(faiss, features, k, exact, nlist, nprobe, chunk_size, gpu):
        stop = start + len(chunk_nbrs)
        nbrs[start:stop], sims[start:stop] = _put_self_first(chunk_nbrs, chunk_sims, np.arange(start, stop))
        if progress is not None:
            progress(100.0 * stop / n)
    return KnnGraph(nbrs=nbrs, sims=sims)


def _search_chunks(
    faiss, features: np.ndarray, k: int, exact: bool, nlist: int | None, nprobe: int, chunk_size: int, gpu: int | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, ids, similarities) of each chunk of queries: faiss's flat index (exact) or GPU IVF,
    or on the CPU the list-by-list IVF search of ``clustering.ivf_cpu`` (faiss's candidates, faster)."""
    n, dim = features.shape
    if not exact and gpu is None:
        nlist = _checked_nlist(n, nlist, nprobe)
        yield from ivf_self_knn(faiss, features, k, nlist, min(nprobe, nlist), chunk_size)
        return
    index = _flat_index(faiss, dim, gpu) if exact else _ivf_index(faiss, features, nlist, nprobe, gpu)
    for start in range(0, n, chunk_size):
        index.add(_normalised_rows(features, start, chunk_size))
    for start in range(0, n, chunk_size):
        queries = _normalised_rows(features, start, chunk_size)
        chunk_sims, chunk_nbrs = index.search(queries, k)
        if not exact:
            _research_incomplete_rows(index, queries, chunk_sims, chunk_nbrs, GPU_MAX_NPROBE)
        yield start, chunk_nbrs, chunk_sims


def _cuda_device(device: str) -> torch.device:
    """The CUDA device ``device`` names (``auto``/``cuda`` = the current one)."""
    resolved = resolve_device("cuda" if device == "auto" else device)
    return resolved if resolved.index is not None else torch.device("cuda", torch.cuda.current_device())


def _to_gpu(faiss, index, gpu: int | None):
    return index if gpu is None else faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index)


def _flat_index(faiss, dim: int, gpu: int | None):
    return _to_gpu(faiss, faiss.IndexFlatIP(dim), gpu)


def _checked_nlist(n: int, nlist: int | None, nprobe: int) -> int:
    nlist = default_nlist(n) if nlist is None else nlist
    if not 1 <= nlist <= n:
        raise ConfigError(f"build_knn: nlist={nlist} must be between 1 and N={n}")
    if nprobe < 1:
        raise ConfigError(f"build_knn: nprobe must be >= 1, got {nprobe}")
    return nlist


def _ivf_index(faiss, features: np.ndarray, nlist: int | None, nprobe: int, gpu: int):
    """faiss's IVF-Flat on GPU ``gpu``, trained there (``clustering.ivf_cpu.train_ivf``)."""
    nlist = _checked_nlist(len(features), nlist, nprobe)
    index = train_ivf(faiss, features, nlist, lambda cpu_index: _to_gpu(faiss, cpu_index, gpu))
    index.nprobe = min(nprobe, nlist, GPU_MAX_NPROBE)  # IndexIVF and GpuIndexIVF share it
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
