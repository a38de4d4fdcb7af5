"""Pair statistics against a hand computation, their standardisation, and the pair_gbdt reference method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustering.base import make_method
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.knn import KnnGraph, build_knn
from clustering.links import LINK_RULES
from clustering.pair_classifier import edge_statistics
from clustering.pair_stats import N_STATS, STAT_NAMES, NeighbourhoodIndex, PairStatNorm
from semiface.errors import ConfigError, DataError

# 5 nodes; each row: self first, then neighbours by decreasing similarity (-1 = none)
NBRS = np.array([[0, 1, 2, 3], [1, 0, 2, -1], [2, 1, 0, 4], [3, 0, 4, 2], [4, 3, 2, 1]])
SIMS = np.array([[1, .9, .8, .5], [1, .9, .7, 0], [1, .7, .8, .3], [1, .5, .6, .2], [1, .6, .3, .1]], dtype=np.float32)
# rows not sorted by similarity on purpose (node 2): the index keeps the graph's order


def test_statistics_match_a_hand_computation() -> None:
    index = NeighbourhoodIndex.from_graph(KnnGraph(NBRS, SIMS), k=3, density_k=2)
    np.testing.assert_array_equal(index.nbrs.numpy(), [[1, 2, 3], [0, 2, -1], [1, 0, 4], [0, 4, 2], [3, 2, 1]])
    np.testing.assert_allclose(index.density.numpy(), [0.85, 0.8, 0.75, 0.55, 0.45])
    centres = torch.tensor([0, 2])
    ids = torch.tensor([[1, 3, -1], [4, 1, 3]])
    cosine = torch.tensor([[0.9, 0.5, 0.0], [0.3, 0.7, 0.2]])
    stats = index.stats(centres, ids, cosine)
    assert stats.shape == (2, 3, N_STATS) and STAT_NAMES[:4] == ("cosine", "rank", "reverse_rank", "shared")
    c = {name: stats[..., i] for i, name in enumerate(STAT_NAMES)}
    absent = 4 / 3
    # (0, 1): 1 is 0's first neighbour, 0 is 1's first; N(0) & N(1) = {2}
    # (0, 3): 3 is 0's third, 0 is 3's first; N(0) & N(3) = {2}
    # (2, 4): 4 is 2's third, 2 is 4's second; N(2) & N(4) = {1}
    # (2, 1): 1 is 2's first, 2 is 1's second; N(2) & N(1) = {0}
    # (2, 3): 3 not in N(2), 2 is 3's third; N(2) & N(3) = {0, 4}
    torch.testing.assert_close(c["rank"], torch.tensor([[1 / 3, 1.0, 0], [1.0, 1 / 3, absent]]))
    torch.testing.assert_close(c["reverse_rank"], torch.tensor([[1 / 3, 1 / 3, 0], [2 / 3, 2 / 3, 1.0]]))
    torch.testing.assert_close(c["shared"], torch.tensor([[1 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 2 / 3]]))
    torch.testing.assert_close(c["density_other"], torch.tensor([[0.8, 0.55, 0], [0.45, 0.8, 0.55]]))
    torch.testing.assert_close(c["over_centre"], torch.tensor([[0.05, -0.35, 0], [-0.45, -0.05, -0.55]]))
    assert (stats[0, 2] == 0).all()  # padding


def test_norm_standardises_with_the_training_pairs_and_is_saved() -> None:
    norm = PairStatNorm()
    stats = torch.randn(500, N_STATS) * torch.arange(1, N_STATS + 1) + 3
    norm.calibrate(stats)
    out = norm(stats)
    torch.testing.assert_close(out.mean(0), torch.zeros(N_STATS), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0), torch.ones(N_STATS), atol=1e-3, rtol=0)
    assert set(norm.state_dict()) == {"mean", "std"}


@pytest.fixture(scope="module")
def splits():
    return benchmark_splits(80, [60], config=BenchmarkConfig(dim=32, nuisance_dims=4), seed=4)


def test_pair_gbdt_ranks_links_better_than_their_cosine(splits) -> None:
    """On unseen identities the trees' link scores separate same-identity kNN pairs from others
    better than the cosine a threshold baseline cuts."""
    from sklearn.metrics import roc_auc_score

    method = make_method("pair_gbdt", k=20).fit(splits.train_features, splits.train_labels)
    test_x, test_y = splits.test_features[0], splits.test_labels[0]
    ids, stats = edge_statistics(build_knn(test_x, 20))
    same = (test_y[ids[:, 1:]] == test_y[:, None]).reshape(-1)
    flat = stats.reshape(-1, N_STATS)
    learned = roc_auc_score(same, method.model_.predict_proba(flat)[:, 1])
    cosine = roc_auc_score(same, flat[:, STAT_NAMES.index("cosine")])
    assert learned > cosine + 0.01, (learned, cosine)
    assert np.isfinite(method.tau_) and method.link_rule_ in LINK_RULES  # tau as log-odds, the rule tuned


def test_pair_gbdt_saves_loads_and_refuses_bad_input(tmp_path, splits) -> None:
    method = make_method("pair_gbdt", k=10, max_iter=30).fit(splits.train_features, splits.train_labels)
    loaded = type(method).load(method.save(tmp_path / "gbdt.pkl"))
    graph = build_knn(splits.test_features[0], 10)
    np.testing.assert_array_equal(loaded.fit_predict(splits.test_features[0], graph),
                                  method.fit_predict(splits.test_features[0], graph))
    assert loaded.tau_ == method.tau_
    (tmp_path / "foreign.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="foreign.pkl"):
        type(method).load(tmp_path / "foreign.pkl")
    with pytest.raises(DataError, match="same-identity"):
        make_method("pair_gbdt", k=5, tau=0.5).fit(splits.train_features[:40], np.arange(40))


def test_pair_gbdt_tunes_like_facet_and_retunes_without_refitting(splits, caplog) -> None:
    """The trees learn from the identities left after holding out val_fraction; tau and the rule are
    tuned on the slice FaceT tunes on; retuned keeps the trees and tunes again for another partition."""
    import logging

    method = make_method("pair_gbdt", k=20, max_iter=50, tune_samples=400).fit(splits.train_features, splits.train_labels)
    infomap = method.retuned(splits.train_features, splits.train_labels, partition="infomap", infomap_weight="sqrt_odds",
                             infomap_trials=2)
    assert infomap.model_ is method.model_ and infomap.partition == "infomap" and method.partition == "union_find"
    assert infomap.infomap_trials == 2 and len(np.unique(infomap.fit_predict(splits.test_features[0], None))) > 1
    with pytest.raises(ConfigError, match="infomap_trials must be >= 1"):
        make_method("pair_gbdt", infomap_trials=0)
    again = method.retuned(splits.train_features, splits.train_labels)
    assert (again.tau_, again.link_rule_) == (method.tau_, method.link_rule_)
    with pytest.raises(ConfigError, match="max_iter change the trees"):
        method.retuned(splits.train_features, splits.train_labels, max_iter=10)
    with caplog.at_level(logging.WARNING, logger="clustering.pair_classifier"):
        untuned = make_method("pair_gbdt", k=20, max_iter=20, val_fraction=0.0).fit(splits.train_features,
                                                                                   splits.train_labels)
    assert "no validation slice to tune tau on" in caplog.text and (untuned.threshold, untuned.rule) == (0.0, "average")
