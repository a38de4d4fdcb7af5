"""Undirected links: dropping directed scores that cannot reach the floor before the sort is exact."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.links import LINK_RULES, undirected_links


@pytest.mark.parametrize("rule", LINK_RULES)
@pytest.mark.parametrize("floor", [0.0, 0.3, 0.5, 0.6, 0.9])
def test_filtering_before_the_sort_equals_filtering_after(rule: str, floor: float) -> None:
    rng = np.random.default_rng(7)
    n, k = 300, 12
    # each row: the node, then k - 1 distinct other nodes (as in a kNN graph), some padded with -1
    others = np.array([rng.choice(n - 1, k - 1, replace=False) for _ in range(n)])
    others += others >= np.arange(n)[:, None]
    ids = np.concatenate([np.arange(n)[:, None], others], axis=1)
    ids[:, 1:][rng.random((n, k - 1)) < 0.05] = -1
    probs = rng.random((n, k)).astype(np.float32)
    src, dst, weight = undirected_links(n, ids, probs, rule, floor=floor)
    all_src, all_dst, all_weight = undirected_links(n, ids, probs, rule, floor=0.0)
    keep = all_weight >= floor
    np.testing.assert_array_equal(src, all_src[keep])
    np.testing.assert_array_equal(dst, all_dst[keep])
    np.testing.assert_allclose(weight, all_weight[keep], rtol=0, atol=1e-7)
    assert (src < dst).all()
