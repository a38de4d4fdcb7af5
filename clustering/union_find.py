"""Connected components of an edge list, optionally with a cap on component size.

The plain case is scipy's ``connected_components``. The capped case is a union-find that
adds edges in decreasing weight order and refuses a merge that would exceed ``max_size``;
it is processed in vectorised batches (see ``_capped_union``), never one Python step per edge
on large inputs.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _scipy_components

from semiface.errors import ConfigError, DataError

# Below this many edges a batch whose merges overflow the cap is replayed one edge at a time.
_SEQUENTIAL_EDGES = 32


def connected_components(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    *,
    max_size: int | None = None,
    min_size: int = 1,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster ids (int64 [n], contiguous from 0, in order of each cluster's smallest member).

    Nodes joined by an edge (undirected) share a cluster. With ``max_size`` edges are added in
    decreasing ``weight`` order (input order when no weight) and a merge that would make a cluster
    larger than ``max_size`` is refused. Clusters smaller than ``min_size`` get -1.
    """
    src, dst = _check_edges(n, src, dst, weight)
    if min_size < 1:
        raise ConfigError(f"connected_components: min_size must be >= 1, got {min_size}")
    if max_size is None:
        graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
        _, labels = _scipy_components(graph, directed=False)
        labels = labels.astype(np.int64)
    else:
        if max_size < 1:
            raise ConfigError(f"connected_components: max_size must be >= 1, got {max_size}")
        if weight is not None:
            order = np.argsort(-np.asarray(weight, dtype=np.float64), kind="stable")
            src, dst = src[order], dst[order]
        labels = _capped_union(n, src, dst, max_size)
    return drop_small(labels, min_size)


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set clusters smaller than ``min_size`` to -1 and renumber the rest 0.. by smallest member."""
    labels = np.asarray(labels, dtype=np.int64)
    kept = labels >= 0
    if min_size > 1:
        sizes = np.bincount(labels[kept], minlength=1)
        kept &= sizes[np.where(kept, labels, 0)] >= min_size
    out = np.full(len(labels), -1, dtype=np.int64)
    members = np.flatnonzero(kept)
    # number clusters in order of their first (smallest) member
    _, first, inverse = np.unique(labels[members], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    out[members] = rank[inverse]
    return out


def _check_edges(
    n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if n < 0:
        raise ConfigError(f"connected_components: n must be >= 0, got {n}")
    src = np.asarray(src).reshape(-1)
    dst = np.asarray(dst).reshape(-1)
    if len(src) != len(dst) or (weight is not None and len(np.asarray(weight).reshape(-1)) != len(src)):
        sizes = f"src {len(src)}, dst {len(dst)}" + ("" if weight is None else f", weight {len(np.asarray(weight))}")
        raise DataError("edges", f"edge arrays differ in length ({sizes})")
    if len(src) and not (np.issubdtype(src.dtype, np.integer) and np.issubdtype(dst.dtype, np.integer)):
        raise DataError("edges", f"node ids must be integers, got {src.dtype} and {dst.dtype}")
    src, dst = src.astype(np.int64, copy=False), dst.astype(np.int64, copy=False)
    if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise DataError("edges", f"node ids must lie in [0, {n}), found [{min(src.min(), dst.min())}, {max(src.max(), dst.max())}]")
    return src, dst


class _Forest:
    """Union-find state as arrays: ``parent`` (roots point to themselves; a root is its set's smallest member)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def roots(self, nodes: np.ndarray) -> np.ndarray:
        """Roots of ``nodes`` by pointer jumping, compressing their paths."""
        current = self.parent[nodes]
        while True:
            up = self.parent[current]
            if np.array_equal(up, current):
                break
            current = up
        self.parent[nodes] = current
        return current

    def merge_groups(self, roots: np.ndarray, group: np.ndarray) -> None:
        """Merge the sets of ``roots`` that share a ``group`` id (each root listed once)."""
        if len(roots) == 0:
            return
        rep = np.full(group.max() + 1, np.iinfo(np.int64).max)
        np.minimum.at(rep, group, roots)
        total = np.bincount(group, weights=self.size[roots]).astype(np.int64)
        self.parent[roots] = rep[group]
        self.size[rep[group]] = total[group]


def _capped_union(n: int, src: np.ndarray, dst: np.ndarray, max_size: int) -> np.ndarray:
    forest = _Forest(n)
    _add_in_order(forest, src, dst, max_size)
    return forest.roots(np.arange(n, dtype=np.int64))


def _add_in_order(forest: _Forest, src: np.ndarray, dst: np.ndarray, max_size: int) -> None:
    """Add edges in the given order, refusing merges past ``max_size``; same result as one edge at a time.

    The sets an ordered batch of edges would join form groups (components of the batch over the
    current roots). A group whose total size fits under the cap is merged at once: taken one at a
    time its merges never exceed that total. Edges of overflowing groups are replayed in two
    halves, recursively, down to a few edges replayed sequentially (the cap makes the outcome
    depend on order there, and only there, so that loop is unavoidable; it touches only edges
    where the cap binds).
    """
    if len(src) == 0:
        return
    if len(src) <= _SEQUENTIAL_EDGES:
        for a, b in zip(src.tolist(), dst.tolist(), strict=True):
            ra, rb = forest.roots(np.array([a, b]))
            if ra != rb and forest.size[ra] + forest.size[rb] <= max_size:
                forest.merge_groups(np.array([ra, rb]), np.zeros(2, dtype=np.int64))
        return
    rs, rd = forest.roots(src), forest.roots(dst)
    # sets only grow: an edge that joins one set, or two whose sizes already sum past the cap,
    # is a no-op or refused now and at its turn
    live = (rs != rd) & (forest.size[rs] + forest.size[rd] <= max_size)
    src, dst, rs, rd = src[live], dst[live], rs[live], rd[live]
    if len(src) == 0:
        return
    uniq, inverse = np.unique(np.concatenate([rs, rd]), return_inverse=True)
    a, b = inverse[: len(rs)], inverse[len(rs) :]
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(uniq), len(uniq)))
    _, group = _scipy_components(graph, directed=False)
    group_size = np.bincount(group, weights=forest.size[uniq])
    fits = group_size[group] <= max_size
    forest.merge_groups(uniq[fits], group[fits])
    overflow = ~fits[a]
    src, dst = src[overflow], dst[overflow]
    half = len(src) // 2
    _add_in_order(forest, src[:half], dst[:half], max_size)
    _add_in_order(forest, src[half:], dst[half:], max_size)
