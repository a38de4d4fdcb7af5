"""IVF kNN of a set with itself on the CPU, list by list: the candidates of faiss's IVF-Flat, searched as matrix products.

faiss's CPU IVF search takes one query at a time and scans its ``nprobe`` lists vector by vector
(about 60 ns per candidate on the 2-core test machine: 480 s for 1M x 256 at nprobe 32). Here the
queries of a chunk are grouped by the lists they probe, so each list meets all its queries in one
matrix product (torch's BLAS), and every query keeps its best ``k`` in a faiss heap
(``faiss.ResultHeap``, C++). The coarse quantizer is faiss's IVF training, rows are assigned to
their nearest centroid and queries probe their ``nprobe`` nearest centroids exactly as
``IndexIVFFlat`` does, so the result is faiss's IVF graph (the same candidates; similarities equal
up to float rounding), several times faster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from semiface.features import l2_normalize

# Train the coarse quantizer on at most this many points per list (faiss warns below 39).
IVF_TRAIN_POINTS_PER_LIST = 64


def default_nlist(n: int) -> int:
    """About 4 sqrt(N) lists, at least 39 points each."""
    return int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))


def train_ivf(faiss, features: np.ndarray, nlist: int, to_device: Callable = lambda index: index):
    """An IVF-Flat index (inner product; ``to_device`` may move it to a GPU before training) with its
    coarse quantizer trained on a seeded sample of ``IVF_TRAIN_POINTS_PER_LIST`` rows per list; nothing added."""
    n, dim = features.shape
    index = to_device(faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT))
    n_train = min(n, IVF_TRAIN_POINTS_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(0).choice(n, size=n_train, replace=False))
    index.train(l2_normalize(features[rows]))
    return index


def ivf_self_knn(
    faiss, features: np.ndarray, k: int, nlist: int, nprobe: int, chunk_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each chunk of ``chunk_size`` rows of ``features``: (first row, ids int64 [rows, k],
    similarities float32 [rows, k]) of its nearest rows among all rows, by decreasing similarity, as
    IVF-Flat with ``nlist`` lists probed ``nprobe`` at a time finds them.

    A row whose probed lists hold fewer than ``k`` rows is searched exactly over every row (faiss
    would pad it with -1, and ``build_knn`` re-searched such rows over every list). Memory beyond
    the caller's result: the L2-normalised rows sorted by list (N*D*4 bytes, as faiss's inverted
    lists), their order (8 bytes a row) and one chunk's heaps and probes.
    """
    n = len(features)
    index = train_ivf(faiss, features, nlist)
    quantizer = index.quantizer
    home = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk_size):
        home[start : start + chunk_size] = quantizer.search(_unit(features, start, chunk_size), 1)[1][:, 0]
    order = np.argsort(home, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(home, minlength=nlist))]
    del home
    rows = np.empty(features.shape, dtype=np.float32)
    for start in range(0, n, chunk_size):
        rows[start : start + chunk_size] = l2_normalize(features[order[start : start + chunk_size]])
    by_list = torch.from_numpy(rows)
    workers = max(1, torch.get_num_threads())
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, n, chunk_size):
            queries = _unit(features, start, chunk_size)
            probes = quantizer.search(queries, nprobe)[1]
            parts = np.array_split(np.arange(len(queries)), workers)
            with _single_threaded_libraries(faiss):
                jobs = [pool.submit(_scan_lists, faiss, queries[part], probes[part], by_list, order, bounds, k) for part in parts]
                found = [job.result() for job in jobs]
            ids, sims = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
            short = np.flatnonzero((ids < 0).any(axis=1))
            if len(short):
                exact_sims, exact_ids = faiss.knn(queries[short], rows, k, metric=faiss.METRIC_INNER_PRODUCT)
                ids[short], sims[short] = order[exact_ids], exact_sims
            yield start, ids, sims


def _scan_lists(
    faiss, queries: np.ndarray, probes: np.ndarray, by_list: torch.Tensor, order: np.ndarray, bounds: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` (ids, similarities) of each query among the lists it ``probes``: list by list, one
    matrix product with all the queries probing it, merged into each query's heap."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    flat = probes.reshape(-1)
    query_of = np.argsort(flat, kind="stable") // probes.shape[1]  # the queries probing each list, list by list
    cuts = np.r_[0, np.cumsum(np.bincount(flat, minlength=len(bounds) - 1))]
    rows = torch.from_numpy(queries)
    for lst in np.flatnonzero((np.diff(cuts) > 0) & (np.diff(bounds) > 0)):
        subset = query_of[cuts[lst] : cuts[lst + 1]]
        scores = rows[torch.from_numpy(subset)] @ by_list[bounds[lst] : bounds[lst + 1]].T
        heap.add_result_subset(subset, scores.numpy(), order[bounds[lst] : bounds[lst + 1]])
    heap.finalize()
    return heap.I, heap.D


@contextlib.contextmanager
def _single_threaded_libraries(faiss) -> Iterator[None]:
    """torch and faiss on one thread each while the lists are scanned by one worker thread per core:
    with their own thread pools the two libraries spin against each other on every small product
    (measured on 2 cores: 10x slower)."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def _unit(features: np.ndarray, start: int, chunk_size: int) -> np.ndarray:
    return np.ascontiguousarray(l2_normalize(features[start : start + chunk_size]), dtype=np.float32)
