"""Verification: TAR at FAR on a constructed case, a cross-check against sorting, histogram edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recognition_eval.histogram import ScoreHistogram
from recognition_eval.verification import verification_tar


def _known_case():
    """10 identities x 2 images with genuine scores 0.05, 0.15, ..., 0.95; 1,000 negatives.

    Image a_k = e_k, b_k = c_k e_k + s_k e_(10+k): different identities are orthogonal (180 probe
    negatives at 0). 41 distractors: 36 along e_20 (score 0 with every probe) and 5 at 0.6 e_0 + 0.8 e_20
    (score 0.6 with a_0, 0.6 c_0 = 0.03 with b_0, 0 with the rest): 180 + 20 x 41 = 1,000 negatives, of
    which 5 score 0.6, 5 score 0.03 and 990 score 0.
    """
    dim = 21
    c = 0.05 + 0.1 * np.arange(10)
    probes = np.zeros((20, dim))
    probes[np.arange(10), np.arange(10)] = 1.0
    probes[10 + np.arange(10), np.arange(10)] = c
    probes[10 + np.arange(10), 10 + np.arange(10)] = np.sqrt(1 - c**2)
    ids = [f"id{k}" for k in range(10)] * 2
    distractors = np.zeros((41, dim))
    distractors[:36, 20] = 1.0
    distractors[36:, 0], distractors[36:, 20] = 0.6, 0.8
    return probes.astype(np.float32), ids, distractors.astype(np.float32)


def test_known_tar_at_far():
    probes, ids, distractors = _known_case()
    result = verification_tar(probes, ids, distractors, device="cpu")
    assert result.n_positives == 10
    assert result.n_negatives == 1000
    assert result.n_negative_probe_pairs == 180 and result.n_negative_distractor_pairs == 820
    # FAR 1e-1 and 1e-2 allow 100 and 10 negatives: the threshold sits just above 0 (990 negatives
    # there), all 10 positives pass. FAR 1e-3 allows 1: the threshold goes above 0.6, 4 positives
    # (0.65 .. 0.95) pass. Below 1 / 1,000 nothing is measurable.
    np.testing.assert_allclose(result.tar[:3], [1.0, 1.0, 0.4])
    np.testing.assert_allclose(result.achieved_far[:3], [0.01, 0.01, 0.0])
    assert result.measurable.tolist() == [True, True, True, False, False, False]
    assert np.isnan(result.tar[3:]).all()
    assert 0 < result.thresholds[0] < 1e-5 and 0.6 < result.thresholds[2] < 0.6 + 1e-5
    assert result.min_measurable_far == pytest.approx(1e-3)
    assert result.to_dict()["tar"][3:] == [None, None, None]


def test_matches_exact_sorting_on_random_data():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((30, 12))
    ids = np.repeat(np.arange(30), 4)
    probes = centres[ids] + 1.2 * rng.standard_normal((len(ids), 12))
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    distractors = rng.standard_normal((300, 12)).astype(np.float32)
    distractors /= np.linalg.norm(distractors, axis=1, keepdims=True)
    fars = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)

    result = verification_tar(probes, ids, distractors, fars=fars, device="cpu", max_bytes=200_000)

    scores = probes @ probes.T
    upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
    same = ids[:, None] == ids[None, :]
    positives = scores[upper & same]
    negatives = np.sort(np.concatenate([scores[upper & ~same], (probes @ distractors.T).ravel()]))[::-1]
    assert result.n_positives == len(positives) == 30 * 6
    assert result.n_negatives == len(negatives) == 120 * 119 // 2 - 180 + 120 * 300
    for far, tar in zip(fars, result.tar, strict=True):
        k = int(np.floor(far * len(negatives)))
        if k == 0:
            assert np.isnan(tar)
            continue
        # exact: accept scores above the (k+1)-th best negative
        assert tar == pytest.approx(np.mean(positives > negatives[k]))
    assert (result.achieved_far[~np.isnan(result.tar)] <= np.asarray(fars)[~np.isnan(result.tar)]).all()
    assert (np.diff(result.roc_far) >= 0).all() and (np.diff(result.roc_tar) >= 0).all()
    assert result.roc_tar[-1] == 1.0


def test_subset_of_distractors_and_probe_pairs_only():
    probes, ids, distractors = _known_case()
    subset = verification_tar(probes, ids, distractors, n_distractors=10, device="cpu")
    assert subset.n_negatives == 180 + 20 * 10 and subset.n_distractors == 10
    alone = verification_tar(probes, ids, None, device="cpu")
    assert alone.n_negatives == 180 and alone.n_negative_distractor_pairs == 0
    assert alone.measurable.tolist() == [True, True, False, False, False, False]


def test_histogram_bins_edges_and_out_of_range_scores():
    hist = ScoreHistogram(bins=8)  # width 0.25: bin i covers [-1 + 0.25 i, -0.75 + 0.25 i)
    hist.add_(torch.tensor([-1.0000001, -1.0, -0.5, 0.0, 0.49, 0.5, 1.0, 1.0000001]))
    assert hist.counts.tolist() == [2, 0, 1, 0, 1, 1, 1, 2]
    above = hist.at_or_above()
    assert above.tolist() == [8, 6, 6, 5, 5, 4, 3, 2, 0]
    assert hist.lower_edge(6) == pytest.approx(0.5)
    assert hist.total == 8
