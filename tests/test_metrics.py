"""Clustering metrics on hand-made cases and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import fowlkes_mallows_score, normalized_mutual_info_score

from clustering.metrics import (
    bcubed_scores,
    evaluate_partition,
    fowlkes_mallows,
    nmi,
    noise_ratio,
    pairwise_scores,
)
from semiface.errors import DataError

GT = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([5, 5, 7, 7, 7, 9])


def test_pairwise_by_hand() -> None:
    # ordered pairs: predicted 5:{0,1} -> 2, 7:{2,3,4} -> 6 => 8; true 0:{0,1,2} -> 6, 1:{3,4} -> 2 => 8
    # agreeing pairs: (0,1),(1,0) and (3,4),(4,3) => 4
    p, r, f = pairwise_scores(GT, PRED)
    assert (p, r) == (0.5, 0.5)
    assert f == pytest.approx(0.5)


def test_bcubed_by_hand() -> None:
    # cells: (0,5)=2 (0,7)=1 (1,7)=2 (2,9)=1; pred sizes 2,3,1; gt sizes 3,2,1
    p, r, f = bcubed_scores(GT, PRED)
    assert p == pytest.approx((4 / 2 + 1 / 3 + 4 / 3 + 1 / 1) / 6)
    assert r == pytest.approx((4 / 3 + 1 / 3 + 4 / 2 + 1 / 1) / 6)
    assert f == pytest.approx(2 * p * r / (p + r))


def test_noise_ratio_by_hand() -> None:
    # cluster 5 is pure, cluster 7 has one sample of identity 0 among two of identity 1; 9 is a singleton
    assert noise_ratio(GT, PRED) == pytest.approx(1 / 5)
    assert noise_ratio(GT, np.arange(6)) == 0.0


def test_perfect_and_all_singletons() -> None:
    assert pairwise_scores(GT, GT) == (1.0, 1.0, 1.0)
    assert bcubed_scores(GT, GT + 10) == (1.0, 1.0, 1.0)
    p, r, f = pairwise_scores(GT, np.arange(6))
    assert (p, r, f) == (1.0, 0.0, 0.0)
    assert pairwise_scores(np.arange(4), np.arange(4)) == (1.0, 1.0, 1.0)
    p, r, f = pairwise_scores(GT, np.zeros(6, dtype=np.int64))
    assert r == 1.0 and p == pytest.approx(8 / 30)


def test_unclustered_counts_as_singletons() -> None:
    pred = np.array([0, 0, -1, -1, -1, 1])
    as_singletons = np.array([0, 0, 2, 3, 4, 1])
    assert pairwise_scores(GT, pred) == pairwise_scores(GT, as_singletons)
    assert bcubed_scores(GT, pred) == bcubed_scores(GT, as_singletons)
    assert nmi(GT, pred) == pytest.approx(normalized_mutual_info_score(GT, as_singletons))
    scores = evaluate_partition(GT, pred)
    assert (scores["n_clusters"], scores["n_singletons"], scores["n_unclustered"]) == (2, 1, 3)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 40, 3000)
    pred = np.where(rng.random(3000) < 0.7, gt, rng.integers(0, 60, 3000)) * 3 + 1
    assert nmi(gt, pred) == pytest.approx(normalized_mutual_info_score(gt, pred, average_method="arithmetic"))
    assert fowlkes_mallows(gt, pred) == pytest.approx(fowlkes_mallows_score(gt, pred))
    p, r, _ = pairwise_scores(gt, pred)
    assert np.sqrt(p * r) == pytest.approx(fowlkes_mallows_score(gt, pred))


def test_pairwise_equals_brute_force_pair_count() -> None:
    rng = np.random.default_rng(9)
    gt, pred = rng.integers(0, 8, 200), rng.integers(0, 10, 200)
    same_gt = gt[:, None] == gt[None, :]
    same_pred = pred[:, None] == pred[None, :]
    off = ~np.eye(200, dtype=bool)
    tp = (same_gt & same_pred & off).sum()
    p, r, _ = pairwise_scores(gt, pred)
    assert p == pytest.approx(tp / (same_pred & off).sum())
    assert r == pytest.approx(tp / (same_gt & off).sum())


def test_evaluate_partition_keys() -> None:
    scores = evaluate_partition(GT, PRED)
    assert set(scores) == {
        "pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_precision", "bcubed_recall",
        "bcubed_f", "nmi", "fmi", "noise_ratio", "n_clusters", "n_singletons", "n_unclustered",
    }
    assert scores["pairwise_f"] == pytest.approx(0.5)
    assert (scores["n_clusters"], scores["n_singletons"]) == (3, 1)


def test_bad_labels_are_refused() -> None:
    with pytest.raises(DataError, match="6 ground-truth labels but 5"):
        pairwise_scores(GT, PRED[:5])
    with pytest.raises(DataError, match="integer"):
        bcubed_scores(GT, PRED.astype(float))
    with pytest.raises(DataError, match="0 labels"):
        evaluate_partition(np.array([], dtype=int), np.array([], dtype=int))


@pytest.mark.parametrize(
    ("gt", "pred"),
    [
        (np.zeros(5, dtype=int), np.zeros(5, dtype=int)),
        (np.zeros(5, dtype=int), np.arange(5)),
        (np.arange(5), np.arange(5)),
        (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])),
    ],
)
def test_nmi_edge_cases_match_sklearn(gt: np.ndarray, pred: np.ndarray) -> None:
    assert nmi(gt, pred) == pytest.approx(normalized_mutual_info_score(gt, pred, average_method="arithmetic"))


def test_wide_label_values_are_compacted() -> None:
    huge = np.array([2**62, 2**62, 5, 5, -(2**40), 0])
    assert pairwise_scores(GT, huge) == pairwise_scores(GT, np.array([0, 0, 1, 1, 2, 3]))
