"""Partition a weighted link graph into clusters: union-find over links above tau, or Infomap.

The learned methods (FaceT, Clusformer) predict a link probability per kNN edge and call
``partition_links``; ``link_confidence`` turns the same links into a per-sample confidence.
"""

from __future__ import annotations

import numpy as np

from clustering.union_find import connected_components
from semiface.errors import ConfigError, DataError, reject_unknown

PARTITION_METHODS = ("union_find",)


def partition_links(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    *,
    method: str = "union_find",
    tau: float = 0.5,
    max_size: int | None = None,
    min_size: int = 1,
    seed: int = 0,
    **method_params: object,
) -> np.ndarray:
    """Cluster ids int64 [n] (-1 for clusters under ``min_size``) from links ``src``-``dst`` of ``weight``.

    Only links with weight > ``tau`` are used. ``union_find``: connected components, where with
    ``max_size`` links are added by decreasing weight and merges past the cap are refused.
    """
    weight = np.asarray(weight).reshape(-1)
    if len(weight) != len(np.asarray(src).reshape(-1)):
        raise DataError("links", f"{len(weight)} weights for {len(np.asarray(src).reshape(-1))} links")
    keep = weight > tau
    src, dst, weight = np.asarray(src).reshape(-1)[keep], np.asarray(dst).reshape(-1)[keep], weight[keep]
    if method == "union_find":
        reject_unknown(method_params, set(), "partition_links(method='union_find')")
        return connected_components(n, src, dst, weight=weight, max_size=max_size, min_size=min_size)
    raise ConfigError(f"partition_links: unknown method {method!r}; available: {', '.join(PARTITION_METHODS)}")


def link_confidence(labels: np.ndarray, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-sample mean weight of its links (either end) inside its own cluster: float32 [N].

    Samples with label -1, singletons and samples with no link inside their cluster get 0.
    """
    labels = np.asarray(labels)
    src, dst = np.asarray(src).reshape(-1), np.asarray(dst).reshape(-1)
    weight = np.asarray(weight, dtype=np.float64).reshape(-1)
    if not len(src) == len(dst) == len(weight):
        raise DataError("links", f"edge arrays differ in length (src {len(src)}, dst {len(dst)}, weight {len(weight)})")
    inside = (labels[src] == labels[dst]) & (labels[src] >= 0) & (src != dst)
    ends = np.concatenate([src[inside], dst[inside]])
    total = np.bincount(ends, weights=np.tile(weight[inside], 2), minlength=len(labels))
    count = np.bincount(ends, minlength=len(labels))
    return np.divide(total, count, out=np.zeros(len(labels)), where=count > 0).astype(np.float32)
