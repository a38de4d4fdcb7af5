"""Exact cosine kNN on torch: chunked matmul + top-k with bounded memory.

Used on CUDA when no working GPU build of faiss is installed (faiss-cpu only, or a GPU build
without code for the card), and testable on CPU. faiss has no exact search that runs on the GPU
without its GPU build, so this is ours: a blocked ``queries @ base.T`` followed by a running
top-k merge across base blocks, which keeps memory at ``query_chunk x base_chunk`` scores.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from clustering.node_ids import id_dtype
from semiface.features import l2_normalize


def torch_exact_knn(
    features: np.ndarray,
    k: int,
    device: torch.device,
    *,
    query_chunk: int = 8192,
    base_chunk: int = 262_144,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour ids [N, k] as ``id_dtype(N)``, cosine similarities float32 [N, k]) by decreasing similarity.

    ``features`` rows are L2-normalised chunk by chunk (the input, possibly a memory map, is not
    modified). The base is held on ``device`` in ``dtype`` (N*D*2 bytes in bf16); scores are
    compared in float32. Peak device memory beyond the base: ``query_chunk * (base_chunk + 2k)``
    floats (8 GiB for the defaults; lower ``base_chunk`` on smaller cards). ``progress`` is told the
    percentage of queries done after each query chunk.
    """
    n = len(features)
    base = torch.cat([
        torch.from_numpy(np.ascontiguousarray(l2_normalize(features[start : start + base_chunk]))).to(device, dtype)
        for start in range(0, n, base_chunk)
    ])
    nbrs = np.empty((n, k), dtype=id_dtype(n))
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, query_chunk):
        queries = base[start : start + query_chunk]
        best_sims = torch.full((len(queries), k), -torch.inf, device=device)
        best_ids = torch.zeros((len(queries), k), dtype=torch.int64, device=device)
        for base_start in range(0, n, base_chunk):
            scores = (queries @ base[base_start : base_start + base_chunk].T).float()
            take = min(k, scores.shape[1])
            block_sims, block_ids = scores.topk(take, dim=1)
            merged_sims = torch.cat([best_sims, block_sims], dim=1)
            merged_ids = torch.cat([best_ids, block_ids + base_start], dim=1)
            best_sims, order = merged_sims.topk(k, dim=1)
            best_ids = merged_ids.gather(1, order)
        stop = start + len(queries)
        nbrs[start:stop] = best_ids.cpu().numpy()
        sims[start:stop] = best_sims.cpu().numpy()
        if progress is not None:
            progress(100.0 * stop / n)
    return nbrs, sims
