"""connected_components: equals scipy on random graphs; the size cap equals one-edge-at-a-time union-find."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from clustering.union_find import connected_components, drop_small
from semiface.errors import ConfigError, DataError


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b group the nodes identically (label values may differ)."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _reference_capped(n: int, src, dst, weight, max_size: int) -> np.ndarray:
    """Textbook sequential union-find with a size cap, edges by decreasing weight."""
    parent = list(range(n))
    size = [1] * n

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for e in np.argsort(-weight, kind="stable"):
        a, b = find(int(src[e])), find(int(dst[e]))
        if a != b and size[a] + size[b] <= max_size:
            parent[b] = a
            size[a] += size[b]
    return np.array([find(i) for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
def test_equals_scipy_on_random_graphs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    m = int(rng.integers(500, 2500))
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    labels = connected_components(n, src, dst)
    n_ref, ref = scipy_components(coo_matrix((np.ones(m), (src, dst)), shape=(n, n)), directed=False)
    assert labels.dtype == np.int64
    assert _same_partition(labels, ref)
    assert set(labels.tolist()) == set(range(n_ref))
    # ids are numbered by each cluster's smallest member
    firsts = [np.flatnonzero(labels == c)[0] for c in range(n_ref)]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize(("seed", "max_size"), [(0, 3), (1, 10), (2, 40), (3, 7)])
def test_size_cap_equals_sequential_union_find(seed: int, max_size: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = 1500, 3000
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    weight = rng.random(m)
    labels = connected_components(n, src, dst, weight=weight, max_size=max_size)
    assert _same_partition(labels, _reference_capped(n, src, dst, weight, max_size))
    assert np.bincount(labels).max() <= max_size


def test_cap_refuses_only_what_exceeds_it() -> None:
    # chain 0-1-2-3 by decreasing weight, cap 2: 0-1 merge, 1-2 refused, 2-3 merge
    labels = connected_components(4, np.array([0, 1, 2]), np.array([1, 2, 3]), weight=np.array([0.9, 0.8, 0.7]), max_size=2)
    assert labels.tolist() == [0, 0, 1, 1]
    # weight order, not input order, decides: 1-2 heaviest
    labels = connected_components(4, np.array([0, 1, 2]), np.array([1, 2, 3]), weight=np.array([0.5, 0.9, 0.7]), max_size=2)
    assert labels.tolist() == [0, 1, 1, 2]


def test_large_cap_equals_plain_components() -> None:
    rng = np.random.default_rng(7)
    src, dst = rng.integers(0, 3000, 2500), rng.integers(0, 3000, 2500)
    plain = connected_components(3000, src, dst)
    capped = connected_components(3000, src, dst, weight=rng.random(2500), max_size=3000)
    np.testing.assert_array_equal(plain, capped)


def test_min_size_marks_small_clusters() -> None:
    labels = connected_components(7, np.array([0, 1, 4]), np.array([1, 2, 5]), min_size=3)
    assert labels.tolist() == [0, 0, 0, -1, -1, -1, -1]
    assert drop_small(np.array([5, 5, -1, 2, 9, 9]), 2).tolist() == [0, 0, -1, -1, 1, 1]


def test_no_edges_gives_singletons() -> None:
    empty = np.array([], dtype=np.int64)
    assert connected_components(3, empty, empty).tolist() == [0, 1, 2]
    assert connected_components(3, empty, empty, min_size=2).tolist() == [-1, -1, -1]


def test_bad_edges_are_refused() -> None:
    with pytest.raises(DataError, match="node ids must lie in"):
        connected_components(3, np.array([0]), np.array([3]))
    with pytest.raises(DataError, match="differ in length"):
        connected_components(3, np.array([0, 1]), np.array([1]))
    with pytest.raises(ConfigError, match="max_size"):
        connected_components(3, np.array([0]), np.array([1]), max_size=0)
