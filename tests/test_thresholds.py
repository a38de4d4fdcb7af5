"""Threshold candidates derived from the labelled data: ArcFace-like features (different people near
cosine 0) and non-centred ones (near 0.8, like dlib's) are both tuned well; a fixed cosine grid is not."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.base import make_method
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.knn import build_knn
from clustering.metrics import evaluate_partition
from clustering.thresholds import quantile_candidates, refine_candidates, two_stage_search
from semiface.errors import ConfigError

OLD_FIXED_GRID = tuple(np.round(np.arange(0.3, 0.9001, 0.025), 4))  # the grid knn_uf used before


def test_quantile_candidates_follow_the_values_and_crowd_the_upper_tail() -> None:
    values = np.random.default_rng(0).uniform(0.7, 1.0, 10_000)
    grid = quantile_candidates(values, 24)
    assert grid == sorted(grid) and len(grid) == 24
    assert 0.7 <= grid[0] < 0.72 and 0.999 < grid[-1] <= 1.0  # keep 98 % ... keep 0.05 %
    gaps = np.diff(grid)
    assert gaps[-1] < gaps[0] / 10  # log-spaced tail shares: fine steps where the cut usually is
    low = quantile_candidates(values, 24, descending=True)  # distances: the tail is the low end
    assert low[0] < 0.701 and low[-1] > 0.99 and np.diff(low)[0] < np.diff(low)[-1] / 10
    with pytest.raises(ConfigError, match="no finite"):
        quantile_candidates(np.array([np.nan]))


def test_refine_tries_values_between_the_best_neighbours() -> None:
    assert refine_candidates([0.1, 0.2, 0.4], 0.2, 3) == pytest.approx([0.175, 0.25, 0.325])
    assert refine_candidates([0.1, 0.2], 0.1, 1) == pytest.approx([0.15])  # at an end: towards the one neighbour


def test_two_stage_search_lands_near_a_peak_between_coarse_candidates() -> None:
    peak = 0.437

    def score(thresholds: list[float]) -> list[dict]:
        return [{"pairwise_f": 1 - abs(t - peak), "bcubed_f": 1 - abs(t - peak)} for t in thresholds]

    best, table = two_stage_search(score, [0.1, 0.3, 0.5, 0.7], refine=9)  # fine step 0.04
    assert abs(best - peak) <= 0.02 and set(table["pass"]) == {"coarse", "fine"}
    assert table["tau"].is_monotonic_increasing


def _non_centred(features: np.ndarray, shift: float = 2.0) -> np.ndarray:
    """Add one common direction to every feature: different people move from cosine ~0 to ~shift^2 / (1 + shift^2)."""
    direction = np.zeros(features.shape[1], dtype=np.float32)
    direction[0] = 1.0
    moved = features + shift * direction
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def two_kinds():
    splits = benchmark_splits(120, [120], config=BenchmarkConfig(dim=64, nuisance_dims=6), seed=3)
    plain = (splits.train_features, splits.train_labels, splits.test_features[0], splits.test_labels[0])
    shifted = (_non_centred(plain[0]), plain[1], _non_centred(plain[2]), plain[3])
    return {"arcface-like": plain, "non-centred": shifted}


def _between_people_cosine(features: np.ndarray, labels: np.ndarray) -> float:
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(labels), (2, 4000))
    other = labels[i] != labels[j]
    return float(np.mean(np.sum(features[i[other]] * features[j[other]], axis=1)))


@pytest.mark.parametrize("name", ["knn_uf", "infomap", "hac", "dbscan"])
def test_every_baseline_tunes_well_on_both_kinds_of_features(two_kinds, name) -> None:
    plain_x, _, _, _ = two_kinds["arcface-like"]
    shifted_x, labels, _, _ = two_kinds["non-centred"]
    assert _between_people_cosine(plain_x, labels) < 0.2 and _between_people_cosine(shifted_x, labels) > 0.7
    scores = {}
    for kind, (train_x, train_y, test_x, test_y) in two_kinds.items():
        method = make_method(name, k=20).fit(train_x, train_y)
        scores[kind] = evaluate_partition(test_y, method.fit_predict(test_x, build_knn(test_x, 20)))
    for metric in ("pairwise_f", "bcubed_f"):
        assert scores["arcface-like"][metric] > 0.6, scores
        # the shift changes the similarity range, not who is near whom: tuning finds the same quality
        assert scores["non-centred"][metric] > scores["arcface-like"][metric] - 0.05, scores


def test_the_old_fixed_grid_collapses_on_non_centred_features(two_kinds) -> None:
    """What the adaptive search fixes: every cosine of 0.3..0.9 links different people when they sit near 0.8."""
    train_x, train_y, test_x, test_y = two_kinds["non-centred"]
    graph = build_knn(test_x, 20)
    fixed = make_method("knn_uf", k=20, taus=OLD_FIXED_GRID).fit(train_x, train_y)
    adaptive = make_method("knn_uf", k=20).fit(train_x, train_y)
    fixed_f = evaluate_partition(test_y, fixed.fit_predict(test_x, graph))["pairwise_f"]
    adaptive_f = evaluate_partition(test_y, adaptive.fit_predict(test_x, graph))["pairwise_f"]
    assert adaptive_f > fixed_f + 0.3 and adaptive.tau_ > 0.9


def test_adaptive_tuning_on_real_dlib_features(dlib_split) -> None:
    """On real, non-centred face descriptors the tuned tau lands in their range (~0.95), not on a grid's edge."""
    s = dlib_split
    graph = build_knn(s.unlabelled_features, 30)
    adaptive = make_method("knn_uf", k=30).fit(s.labelled_features, s.labelled_labels)
    fixed = make_method("knn_uf", k=30, taus=OLD_FIXED_GRID).fit(s.labelled_features, s.labelled_labels)
    ours = evaluate_partition(s.unlabelled_labels, adaptive.fit_predict(s.unlabelled_features, graph))
    old = evaluate_partition(s.unlabelled_labels, fixed.fit_predict(s.unlabelled_features, graph))
    assert 0.9 < adaptive.tau_ < 0.99 and fixed.tau_ == max(OLD_FIXED_GRID)
    assert ours["bcubed_f"] > old["bcubed_f"] + 0.3 and ours["pairwise_f"] > old["pairwise_f"]
