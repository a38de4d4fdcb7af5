"""Undirected links: dropping directed scores that cannot reach the floor before the sort is exact, and
log-odds give the links of their probabilities without saturating near p = 1."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.links import LINK_RULES, undirected_links


def _rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Each row: the node, then k - 1 distinct other nodes (as in a kNN graph), some padded with -1."""
    others = np.array([rng.choice(n - 1, k - 1, replace=False) for _ in range(n)])
    others += others >= np.arange(n)[:, None]
    ids = np.concatenate([np.arange(n)[:, None], others], axis=1)
    ids[:, 1:][rng.random((n, k - 1)) < 0.05] = -1
    return ids


@pytest.mark.parametrize("rule", LINK_RULES)
@pytest.mark.parametrize("floor", [0.0, 0.3, 0.5, 0.6, 0.9])
def test_filtering_before_the_sort_equals_filtering_after(rule: str, floor: float) -> None:
    rng = np.random.default_rng(7)
    n, k = 300, 12
    ids = _rows(rng, n, k)
    probs = rng.random((n, k)).astype(np.float32)
    src, dst, weight = undirected_links(n, ids, probs, rule, floor=floor)
    all_src, all_dst, all_weight = undirected_links(n, ids, probs, rule, floor=0.0)
    keep = all_weight >= floor
    np.testing.assert_array_equal(src, all_src[keep])
    np.testing.assert_array_equal(dst, all_dst[keep])
    np.testing.assert_allclose(weight, all_weight[keep], rtol=0, atol=1e-7)
    assert (src < dst).all()


@pytest.mark.parametrize("rule", LINK_RULES)
@pytest.mark.parametrize("floor", [None, 0.2, 0.5, 0.7, 0.95])
def test_log_odds_give_the_links_of_their_probabilities(rule: str, floor: float | None) -> None:
    rng = np.random.default_rng(3)
    n, k = 200, 10
    ids = _rows(rng, n, k)
    log_odds = rng.normal(0.0, 4.0, (n, k))
    probs = 1 / (1 + np.exp(-log_odds))
    expected = undirected_links(n, ids, probs, rule, floor)
    floor_log_odds = None if floor is None else float(np.log(floor / (1 - floor)))
    src, dst, weight = undirected_links(n, ids, log_odds.astype(np.float32), rule, floor_log_odds, logits=True)
    np.testing.assert_array_equal(src, expected[0])
    np.testing.assert_array_equal(dst, expected[1])
    np.testing.assert_allclose(1 / (1 + np.exp(-weight.astype(np.float64))), expected[2], rtol=0, atol=1e-6)


def test_log_odds_keep_the_order_of_links_whose_probabilities_saturate() -> None:
    """Log-odds 20 and 30 are both p = 1.0 in float32: as probabilities the two links tie, as log-odds
    the average rule still ranks them (one side unscored halves the probability: log-odds 0)."""
    ids = np.array([[0, 1, 2], [1, 0, -1], [2, 0, -1]])
    log_odds = np.array([[np.inf, 20.0, 30.0], [np.inf, 20.0, -np.inf], [np.inf, 30.0, -np.inf]], dtype=np.float32)
    probs = (1 / (1 + np.exp(-log_odds.astype(np.float64)))).astype(np.float32)
    _, _, as_probs = undirected_links(3, ids, probs, "average")
    src, dst, weight = undirected_links(3, ids, log_odds, "average", logits=True)
    assert as_probs[0] == as_probs[1] == 1.0
    assert list(zip(src, dst, strict=True)) == [(0, 1), (0, 2)] and 19 < weight[0] < weight[1] < 31
    _, _, one_sided = undirected_links(3, np.array([[0, 1], [1, -1]]), np.array([[np.inf, 40.0], [np.inf, 0.0]]),
                                       "average", logits=True)
    assert one_sided[0] == pytest.approx(0.0, abs=1e-6)  # (1 + 0) / 2: log-odds 0
