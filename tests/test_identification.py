"""MegaFace identification: hand-computed ties, brute-force cross-check, nested subsets, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from recognition_eval.identification import distractor_subsets, identification_cmc, used_sizes
from recognition_eval.inputs import EvaluationWarning
from semiface.errors import ConfigError, DataError

# Exact binary fractions: every dot product is exact, so equal scores are bit-equal ties.
HAND_PROBES = np.array(
    [
        [1, 0, 0, 0],  # a1
        [0.5, 0.5, 0.5, 0.5],  # a2
        [1, 0, 0, 0],  # a3
        [0, 0, 1, 0],  # b1
        [0, 0, 0, 1],  # b2
        [0, 1, 0, 0],  # c1: single image, no pair
    ],
    dtype=np.float32,
)
HAND_IDS = ["a", "a", "a", "b", "b", "c"]
HAND_DISTRACTORS = np.array(
    [
        [0.5, 0.5, 0.5, 0.5],  # d1 (same vector as a2)
        [0.5, -0.5, 0.5, -0.5],  # d2
        [0, -1, 0, 0],  # d3
        [-0.5, -0.5, -0.5, -0.5],  # d4
    ],
    dtype=np.float32,
)


def test_hand_computed_rank1_and_cmc_with_ties():
    # Distractors >= sim(p, g) per ordered pair (scores against d1..d4 in brackets):
    # a1->a2 g=.5 [.5 .5 0 -.5]: 2 (two ties count against) -> rank 3;  a1->a3 g=1: 0 -> rank 1
    # a2->a1 g=.5 [1 0 -.5 -1]: 1 -> rank 2;  a2->a3 g=.5: 1 -> rank 2
    # a3->a1 g=1: 0 -> rank 1;  a3->a2 g=.5: 2 -> rank 3
    # b1->b2 g=0 [.5 .5 0 -.5]: 3 (d3 ties) -> rank 4;  b2->b1 g=0 [.5 -.5 0 -.5]: 2 -> rank 3
    # 8 pairs; hits at rank 1..5: 2, 4, 7, 8, 8.
    with pytest.warns(EvaluationWarning, match="single image"):
        result = identification_cmc(
            HAND_PROBES, HAND_IDS, HAND_DISTRACTORS, sizes=(4,), max_rank=5, device="cpu"
        )
    assert result.sizes == (4,)
    assert result.n_pairs == 8
    np.testing.assert_allclose(result.cmc[0], np.array([2, 4, 7, 8, 8]) / 8)
    assert result.rank1[0] == pytest.approx(0.25)
    assert result.rank(3) == pytest.approx(7 / 8)
    assert result.left_out_identities == ("c",)
    assert result.n_left_out_images == 1
    assert result.n_probe_identities == 2 and result.n_probe_images == 5


def _clustered_probes(rng, n_ids, dim, spread):
    centres = rng.standard_normal((n_ids, dim))
    counts = rng.integers(2, 7, size=n_ids)
    ids = np.repeat(np.arange(n_ids), counts)
    feats = centres[ids] + spread * rng.standard_normal((len(ids), dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), np.array([f"id{i}" for i in ids])


def _brute_force_cmc(probes, ids, distractors, subsets, max_rank):
    """Reference: for every ordered pair and every subset, count distractors scoring >= sim(p, g)."""
    out = []
    for subset in subsets:
        gallery = distractors[subset]
        hits = np.zeros(max_rank)
        n_pairs = 0
        for p in range(len(probes)):
            d_scores = gallery @ probes[p]
            for g in range(len(probes)):
                if g == p or ids[g] != ids[p]:
                    continue
                n_pairs += 1
                above = int((d_scores >= probes[p] @ probes[g]).sum())
                hits[above:] += 1  # a hit at every rank r > above
        out.append(hits / n_pairs)
    return np.array(out)


def test_matches_brute_force_reference_in_small_chunks():
    rng = np.random.default_rng(3)
    probes, ids = _clustered_probes(rng, n_ids=12, dim=16, spread=0.9)
    distractors = rng.standard_normal((700, 16)).astype(np.float32)
    distractors /= np.linalg.norm(distractors, axis=1, keepdims=True)
    sizes, seed, max_rank = (10, 100, 500, 5000), 11, 6

    chunked = identification_cmc(
        probes, ids, distractors, sizes=sizes, seed=seed, max_rank=max_rank, device="cpu", max_bytes=20_000
    )
    expected = _brute_force_cmc(probes, ids, distractors, distractor_subsets(700, sizes, seed), max_rank)
    assert chunked.sizes == (10, 100, 500, 700)
    np.testing.assert_allclose(chunked.cmc, expected)
    assert chunked.cmc[:, 0].min() < 0.9  # not a degenerate all-hit case
    whole = identification_cmc(
        probes, ids, distractors, sizes=sizes, seed=seed, max_rank=max_rank, device="cpu"
    )
    np.testing.assert_array_equal(whole.cmc, chunked.cmc)
    # nested sets: more distractors can only lower every rank-r rate
    assert (np.diff(chunked.cmc, axis=0) <= 0).all()
    seen: list[float] = []  # a callback (the flow's progress artifact) is told the share scanned per block
    reported = identification_cmc(probes, ids, distractors, sizes=sizes, seed=seed, max_rank=max_rank, device="cpu",
                                  max_bytes=20_000, progress=seen.append)
    np.testing.assert_array_equal(reported.cmc, chunked.cmc)
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == 100.0


def test_distractor_subsets_are_nested_seeded_and_capped():
    subsets = distractor_subsets(5000, (10, 100, 1000, 1_000_000), seed=4)
    assert [len(s) for s in subsets] == [10, 100, 1000, 5000]
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert set(small) <= set(large)
    assert sorted(subsets[-1]) == list(range(5000))
    again = distractor_subsets(5000, (10, 100, 1000, 1_000_000), seed=4)
    np.testing.assert_array_equal(again[1], subsets[1])
    other = distractor_subsets(5000, (10, 100), seed=5)
    assert set(other[1]) != set(subsets[1])
    assert used_sizes((1_000, 10, 10), 50) == (10, 50)


def test_distractor_outside_smallest_subset_only_counts_at_larger_sizes():
    probes = HAND_PROBES[:5]
    ids = HAND_IDS[:5]
    n = 200
    far_away = np.zeros((n, 4), dtype=np.float32)
    far_away[:, 1] = -1.0  # scores 0 or -0.5 with every probe: below every genuine score but b's (0)
    subsets = distractor_subsets(n, (10, n), seed=0)
    outside = int(np.setdiff1d(subsets[1], subsets[0])[0])
    far_away[outside] = HAND_PROBES[0]  # identical to a1 and a3: scores 1 with a1 and a3
    result = identification_cmc(probes, ids, far_away, sizes=(10, n), max_rank=3, device="cpu")
    # Without the copy, (0,-1,0,0) scores 0 (a1, a3, b1, b2) or -0.5 (a2): all 6 a-pairs beat it
    # (genuine 0.5 or 1); the b-pairs (genuine 0) tie with it and miss at every rank.
    # With the copy of a1 (scores 1 with a1, a3; 0.5 with a2), every a-pair has exactly one
    # distractor >= its genuine score (a tie for a1->a3, a3->a1, a2->a1, a2->a3): rank 2, not 1.
    np.testing.assert_allclose(result.cmc[:, :2], [[6 / 8, 6 / 8], [0, 6 / 8]])


def test_single_image_identities_left_out_and_all_single_refused():
    with (
        pytest.raises(DataError, match="no probe identity has two or more images"),
        pytest.warns(EvaluationWarning),
    ):
        identification_cmc(HAND_PROBES[:2], ["x", "y"], HAND_DISTRACTORS, device="cpu")


def test_no_distractors_dimension_mismatch_and_nan_are_refused():
    probes, ids = HAND_PROBES[:5], HAND_IDS[:5]
    with pytest.raises(DataError, match="no distractors"):
        identification_cmc(probes, ids, np.empty((0, 4), np.float32), device="cpu")
    with pytest.raises(DataError, match="distractors have 3 feature columns, probes have 4"):
        identification_cmc(probes, ids, HAND_DISTRACTORS[:, :3], device="cpu")
    bad = probes.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match=r"probe features: NaN .* rows \[2\]"):
        identification_cmc(bad, ids, HAND_DISTRACTORS, device="cpu")
    bad = HAND_DISTRACTORS.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match=r"distractor features: NaN .* rows \[3\]"):
        identification_cmc(probes, ids, bad, device="cpu")
    bad[3] = 0.0
    with pytest.raises(DataError, match=r"zero-norm rows \[3\]"):
        identification_cmc(probes, ids, bad, device="cpu")
    with pytest.raises(DataError, match="5 feature rows but 4 probe identities"):
        identification_cmc(probes, ids[:4], HAND_DISTRACTORS, device="cpu")


def test_unnormalised_features_are_normalised_with_a_warning():
    probes, ids = HAND_PROBES[:5], HAND_IDS[:5]
    reference = identification_cmc(probes, ids, HAND_DISTRACTORS, sizes=(4,), device="cpu")
    with pytest.warns(EvaluationWarning, match="5 of 5 rows were not L2-normalised"):
        scaled = identification_cmc(3 * probes, ids, 2 * HAND_DISTRACTORS, sizes=(4,), device="cpu")
    np.testing.assert_array_equal(scaled.cmc, reference.cmc)


def test_bad_parameters_are_config_errors():
    probes, ids = HAND_PROBES[:5], HAND_IDS[:5]
    with pytest.raises(ConfigError, match="sizes"):
        identification_cmc(probes, ids, HAND_DISTRACTORS, sizes=(0,), device="cpu")
    with pytest.raises(ConfigError, match="max_rank"):
        identification_cmc(probes, ids, HAND_DISTRACTORS, max_rank=0, device="cpu")
    result = identification_cmc(probes, ids, HAND_DISTRACTORS, max_rank=2, device="cpu")
    with pytest.raises(ConfigError, match="raise max_rank"):
        result.rank(3)
