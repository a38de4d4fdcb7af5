"""Undirected links: the rule applied pair by pair, from strong sides read chunk by chunk, whatever the floor;
log-odds give the links of their probabilities without saturating near p = 1."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.links import LINK_RULES, cluster_confidence, undirected_links


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


def _plain_links(ids: np.ndarray, probs: np.ndarray, rule: str, floor: float) -> dict[tuple[int, int], float]:
    """The rule applied pair by pair from a dict of every directed score (the definition, no shortcut)."""
    sides: dict[tuple[int, int], list[float]] = {}
    for row, probs_row in zip(ids, probs, strict=True):
        for other, p in zip(row[1:], probs_row[1:], strict=True):
            if other >= 0 and other != row[0]:
                sides.setdefault((min(row[0], other), max(row[0], other)), []).append(np.float32(p))
    out = {}
    for pair, scores in sides.items():
        if rule == "any":
            weight = max(scores)
        elif rule == "mutual":
            if len(scores) < 2:
                continue
            weight = min(scores)
        else:
            weight = (scores[0] + scores[1] if len(scores) == 2 else scores[0]) / np.float32(2.0)
        if weight >= floor:
            out[(int(pair[0]), int(pair[1]))] = float(weight)
    return out


@pytest.mark.parametrize("rule", LINK_RULES)
@pytest.mark.parametrize("floor", [0.0, 0.2, 0.5, 0.8])
def test_links_equal_the_rule_applied_pair_by_pair(rule: str, floor: float) -> None:
    """Strong sides and reverse look-ups, chunk by chunk (tiny chunks here), give the definition's links."""
    import clustering.links as links

    rng = np.random.default_rng(11)
    n, k = 200, 9
    others = np.array([rng.choice(n - 1, k - 1, replace=False) for _ in range(n)])
    others += others >= np.arange(n)[:, None]
    ids = np.concatenate([np.arange(n)[:, None], others], axis=1).astype(np.int32)
    ids[:, 1:][rng.random((n, k - 1)) < 0.05] = -1
    probs = rng.random((n, k)).astype(np.float32)
    saved = links.ROW_CHUNK, links.LOOKUP_CHUNK
    links.ROW_CHUNK, links.LOOKUP_CHUNK = 17, 23
    try:
        src, dst, weight = undirected_links(n, ids, probs, rule, floor=floor)
    finally:
        links.ROW_CHUNK, links.LOOKUP_CHUNK = saved
    assert src.dtype == np.int32 and weight.dtype == np.float32
    expected = _plain_links(ids, probs, rule, floor)
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == sorted(expected)
    np.testing.assert_array_equal(weight, np.array([expected[p] for p in sorted(expected)], dtype=np.float32))


def test_within_keeps_the_pairs_inside_each_cluster_whatever_their_weight() -> None:
    ids = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]], dtype=np.int32)
    probs = np.array([[1, 0.1, 0.9], [1, 0.3, 0.8], [1, 0.7, 0.6], [1, 0.2, 0.4]], dtype=np.float32)
    labels = np.array([0, 0, 1, -1])  # 3 is in no cluster
    src, dst, weight = undirected_links(4, ids, probs, "average", within=labels)
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == [(0, 1)]
    np.testing.assert_allclose(weight, [0.2])  # (0.1 + 0.3) / 2, far under any tau


def test_cluster_confidence_reads_the_weak_pairs_of_a_chained_cluster() -> None:
    """Cluster {0, 1, 2}: every pair 0.9. Cluster {3, 4, 5}: chained, 3-4 and 4-5 at 0.9 but 3-5 at 0.1 (the
    links over any tau hold it together). Node 6 is a singleton, node 7 unclustered (-1)."""
    strong, weak = 0.9, 0.1
    pair = {(0, 1): strong, (0, 2): strong, (1, 2): strong, (3, 4): strong, (4, 5): strong, (3, 5): weak,
            (2, 3): weak, (5, 6): 0.4, (6, 7): 0.3}
    n = 8
    ids = np.full((n, 4), -1, dtype=np.int32)
    probs = np.zeros((n, 4), dtype=np.float32)
    for node in range(n):
        others = [(b if a == node else a, p) for (a, b), p in pair.items() if node in (a, b)]
        ids[node, 0], probs[node, 0] = node, 1.0
        for column, (other, p) in enumerate(others, start=1):
            ids[node, column], probs[node, column] = other, p
    labels = np.array([0, 0, 0, 1, 1, 1, 2, -1])
    expected = [strong, strong, strong, (strong + weak) / 2, strong, (strong + weak) / 2, 0.0, 0.0]
    np.testing.assert_allclose(cluster_confidence(labels, ids, probs, "average", logits=False), expected, rtol=1e-6)
    logits = np.log(probs) - np.log1p(-probs.clip(max=1 - 1e-7))
    np.testing.assert_allclose(cluster_confidence(labels, ids, logits, "average", logits=True), expected, rtol=1e-5)


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
    _, _, one_sided = undirected_links(2, np.array([[0, 1], [1, -1]]), np.array([[np.inf, 40.0], [np.inf, 0.0]]),
                                       "average", logits=True)
    assert one_sided[0] == pytest.approx(0.0, abs=1e-6)  # (1 + 0) / 2: log-odds 0
