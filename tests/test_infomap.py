"""Infomap as a partition step: planted communities, seeds, size cap, parameters, import order."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clustering.evaluate import sweep_threshold
from clustering.partition import (
    INFOMAP_BUDGET_ENV,
    ODDS_CAP,
    cap_links_per_node,
    capped_odds,
    infomap_memory,
    infomap_partition,
    link_flow,
    partition_links,
)
from semiface.errors import ConfigError, DataError


def planted(groups: int, size: int, p_in: float, p_out: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random graph with ``groups`` planted communities: (truth, src, dst, weight) with weights in (0.5, 1)."""
    rng = np.random.default_rng(seed)
    n = groups * size
    truth = np.repeat(np.arange(groups), size)
    a, b = np.triu_indices(n, 1)
    p = np.where(truth[a] == truth[b], p_in, p_out)
    keep = rng.random(len(a)) < p
    return truth, a[keep], b[keep], rng.uniform(0.5, 1.0, int(keep.sum()))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_recovers_obvious_communities():
    truth, src, dst, weight = planted(groups=8, size=25, p_in=0.4, p_out=0.01, seed=0)
    labels = partition_links(len(truth), src, dst, weight, method="infomap", tau=0.0)
    assert same_partition(labels, truth)
    # union-find over the same links chains everything together through the few cross links
    assert len(np.unique(partition_links(len(truth), src, dst, weight, tau=0.0))) == 1


def test_same_seed_same_partition():
    truth, src, dst, weight = planted(groups=10, size=15, p_in=0.15, p_out=0.03, seed=1)
    first = partition_links(len(truth), src, dst, weight, method="infomap", tau=0.0, seed=4, num_trials=2)
    again = partition_links(len(truth), src, dst, weight, method="infomap", tau=0.0, seed=4, num_trials=2)
    np.testing.assert_array_equal(first, again)


def test_labels_are_contiguous_isolated_nodes_singletons_and_small_clusters_dropped():
    src, dst, weight = np.array([0, 1, 0, 4, 5]), np.array([1, 2, 2, 5, 6]), np.ones(5)
    labels = infomap_partition(8, src, dst, weight)
    assert labels.dtype == np.int64
    assert same_partition(labels, np.array([0, 0, 0, 1, 2, 2, 2, 3]))
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
    dropped = partition_links(8, src, dst, weight, method="infomap", tau=0.0, min_size=2)
    assert (dropped[[3, 7]] == -1).all() and (dropped[[0, 1, 2, 4, 5, 6]] >= 0).all()


def test_links_at_or_below_tau_are_pruned():
    src, dst = np.array([0, 1, 2, 3]), np.array([1, 2, 3, 4])
    weight = np.array([0.9, 0.9, 0.2, 0.9])
    labels = partition_links(5, src, dst, weight, method="infomap", tau=0.5)
    assert labels[0] == labels[1] == labels[2] and labels[3] == labels[4] and labels[2] != labels[3]


def test_max_size_splits_large_modules():
    truth, src, dst, weight = planted(groups=4, size=30, p_in=0.5, p_out=0.0, seed=2)
    labels = partition_links(len(truth), src, dst, weight, method="infomap", tau=0.0, max_size=10)
    sizes = np.bincount(labels)
    assert sizes.max() <= 10 and (labels >= 0).all()
    # pieces never mix two communities
    assert all(len(np.unique(truth[labels == c])) == 1 for c in range(len(sizes)))


def test_threshold_sweep_partitions_with_infomap():
    truth, src, dst, weight = planted(groups=6, size=20, p_in=0.4, p_out=0.01, seed=3)
    table, best = sweep_threshold(truth, len(truth), src, dst, weight, [0.0, 0.99], partition="infomap")
    assert best == 0.0 and table.loc[table["tau"] == 0.0, "pairwise_f"].item() > 0.95


def test_odds_weights_tell_sure_links_from_doubtful_ones():
    """Two groups of 10, sure inside (p 0.9999), doubtful across (p 0.99, every cross pair): as
    weights the probabilities are nearly equal and Infomap sees one group; their odds (1e4 vs 99)
    and the odds' square roots (100 vs 9.9) separate the two."""
    truth = np.repeat([0, 1], 10)
    src, dst = np.triu_indices(20, 1)
    weight = np.where(truth[src] == truth[dst], 0.9999, 0.99)
    as_probability = partition_links(20, src, dst, weight, method="infomap", tau=0.0)
    assert len(np.unique(as_probability)) == 1
    for link_weight in ("odds", "sqrt_odds"):
        assert same_partition(partition_links(20, src, dst, weight, method="infomap", tau=0.0, link_weight=link_weight), truth)
    # union-find reads only the order, which the odds keep
    np.testing.assert_array_equal(partition_links(20, src, dst, weight, tau=0.995, link_weight="odds"),
                                  partition_links(20, src, dst, weight, tau=0.995))


def test_odds_grow_with_the_log_odds_past_the_cap_and_need_probabilities():
    """Up to ODDS_CAP the odds are p / (1 - p); past it they grow with the log-odds, so sure links keep
    their order (the old hard cap gave every p >= 0.9999 one weight) without a runaway weight."""
    np.testing.assert_allclose(link_flow(np.array([0.0, 0.5, 0.9]), "odds"), [0.0, 1.0, 9.0])
    np.testing.assert_allclose(link_flow(np.array([0.0, 0.5, 0.9]), "sqrt_odds"), [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(link_flow(np.array([0.2, 0.7]), "probability"), [0.2, 0.7])
    sure = np.array([0.9999, 0.99995, 0.99999, 0.999999], dtype=np.float64)
    assert np.all(np.diff(link_flow(sure, "odds")) > 0) and np.all(np.diff(link_flow(sure, "sqrt_odds")) > 0)
    log_odds = np.array([-np.inf, 0.0, np.log(ODDS_CAP), 12.0, 20.0, 40.0])
    odds = link_flow(log_odds, "odds", logits=True)
    np.testing.assert_allclose(odds[:3], [0.0, 1.0, ODDS_CAP])
    np.testing.assert_allclose(odds[3:], ODDS_CAP * (1 + log_odds[3:] - np.log(ODDS_CAP)))
    assert np.all(np.diff(odds) > 0) and odds[-1] < 32 * ODDS_CAP  # p = 1 - 4e-18 is not e^30 times heavier
    np.testing.assert_allclose(capped_odds(np.log([9.0, 99.0])), [9.0, 99.0])
    np.testing.assert_allclose(link_flow(np.array([0.0, 2.0]), "probability", logits=True), [0.5, 1 / (1 + np.exp(-2))])
    assert np.isfinite(link_flow(np.array([1.0], dtype=np.float32), "odds")).all()  # a saturated float32 p
    with pytest.raises(DataError, match="odds need probabilities"):
        partition_links(2, np.array([0]), np.array([1]), np.array([1.5]), method="infomap", tau=0.0, link_weight="odds")
    with pytest.raises(ConfigError, match="link_weight"):
        partition_links(2, np.array([0]), np.array([1]), np.ones(1), link_weight="logit")


def test_log_odds_links_partition_as_their_probabilities() -> None:
    """``logits=True``: links given as log-odds and a log-odds tau give the partition of the same links
    as probabilities, for union-find and for Infomap under every link weight."""
    truth, src, dst, prob = planted(groups=6, size=12, p_in=0.5, p_out=0.05, seed=2)
    prob = np.clip(np.where(truth[src] == truth[dst], 0.9, 0.3) + 0.05 * np.sin(np.arange(len(src))), 0.01, 0.99)
    logit = np.log(prob) - np.log1p(-prob)
    for method, link_weight in (("union_find", "probability"), ("infomap", "probability"), ("infomap", "odds"),
                                ("infomap", "sqrt_odds")):
        as_prob = partition_links(len(truth), src, dst, prob, method=method, tau=0.5, link_weight=link_weight)
        as_logit = partition_links(len(truth), src, dst, logit, method=method, tau=0.0, link_weight=link_weight,
                                   logits=True)
        assert same_partition(as_prob, as_logit), (method, link_weight)


def test_bad_parameters_are_refused():
    one = np.array([0])
    with pytest.raises(ConfigError, match="unknown parameter"):
        partition_links(2, one, one + 1, np.ones(1), method="infomap", bogus=1)
    with pytest.raises(ConfigError, match="num_trials"):
        infomap_partition(2, one, one + 1, np.ones(1), num_trials=0)


def test_infomap_imported_before_faiss_does_not_crash():
    """Both are SWIG modules: reading Infomap's results must not go through iterator types faiss claimed."""
    code = (
        "import infomap, faiss, numpy as np\n"
        "from clustering.partition import partition_links\n"
        "print(partition_links(4, np.array([0, 2]), np.array([1, 3]), np.ones(2), method='infomap', tau=0.0).tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 0, 1, 1]"


def test_a_request_over_the_memory_budget_is_refused_with_its_numbers(monkeypatch):
    truth, src, dst, weight = planted(groups=4, size=10, p_in=0.5, p_out=0.0, seed=1)
    n, links = len(truth), len(src)
    needed = infomap_memory(n, links)
    with pytest.raises(ConfigError) as refused:
        infomap_partition(n, src, dst, weight, memory_budget=needed - 1)
    message = str(refused.value)
    assert f"{links:,} links over {n:,} nodes" in message and INFOMAP_BUDGET_ENV in message
    assert "max_links_per_node" in message and "GiB" in message
    # the environment sets the default budget; just enough memory runs
    monkeypatch.setenv(INFOMAP_BUDGET_ENV, str((needed - 1) / 2**30))
    with pytest.raises(ConfigError, match="memory budget"):
        partition_links(n, src, dst, weight, method="infomap", tau=0.0)
    monkeypatch.setenv(INFOMAP_BUDGET_ENV, str(needed / 2**30))
    assert same_partition(partition_links(n, src, dst, weight, method="infomap", tau=0.0), truth)


def test_each_node_keeps_its_strongest_links_under_the_cap():
    rng = np.random.default_rng(4)
    n, m = 60, 900
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    src, dst = src[src != dst], dst[src != dst]
    weight = rng.random(len(src))
    cap = 5
    kept = cap_links_per_node(n, src, dst, weight, cap)
    assert kept.sum() <= n * cap
    for node in range(n):
        mine = np.flatnonzero((src == node) | (dst == node))
        strongest = mine[np.argsort(-weight[mine], kind="stable")[:cap]]
        assert kept[strongest].all()  # a node's cap strongest links all stay
    for link in np.flatnonzero(kept):  # and a link stays only as one of the cap strongest of one of its ends
        ranks = [np.sum(weight[(src == end) | (dst == end)] > weight[link]) for end in (src[link], dst[link])]
        assert min(ranks) < cap
    labels_capped = partition_links(n, src, dst, weight, method="infomap", tau=0.0, max_links_per_node=cap)
    labels_kept = partition_links(n, src[kept], dst[kept], weight[kept], method="infomap", tau=0.0, max_links_per_node=None)
    np.testing.assert_array_equal(labels_capped, labels_kept)


def test_links_reach_infomap_as_one_array(monkeypatch):
    import infomap

    seen = []
    original = infomap.Infomap.add_links

    def spy(self, links):
        seen.append(links)
        return original(self, links)

    monkeypatch.setattr(infomap.Infomap, "add_links", spy)
    truth, src, dst, weight = planted(groups=3, size=8, p_in=0.6, p_out=0.0, seed=2)
    partition_links(len(truth), src, dst, weight, method="infomap", tau=0.0)
    assert len(seen) == 1 and isinstance(seen[0], np.ndarray) and seen[0].shape == (len(src), 3)
