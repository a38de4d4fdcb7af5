"""Pseudo-label merge: sampling at r_U/L, dropping small / unsure clusters, class-id offsets, bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clustering.pseudo_labels import (
    lower_bound_frame,
    merge_pseudo_labels,
    sample_unlabelled,
    upper_bound_frame,
)
from semiface.errors import ConfigError, DataError
from semiface.manifest import validate_manifest


def _manifest(n_labelled_ids: int = 3, per_id: int = 2, unlabelled_ids: int = 4, per_unl: int = 3) -> pd.DataFrame:
    rows = []
    for c in range(n_labelled_ids):
        rows += [{"path": f"l{c}_{i}.png", "label": c, "identity": f"L{c}", "split": "labelled"} for i in range(per_id)]
    for c in range(unlabelled_ids):
        rows += [{"path": f"u{c}_{i}.png", "label": -1, "identity": f"U{c}", "split": "unlabelled"} for i in range(per_unl)]
    rows += [{"path": "p.png", "label": -1, "identity": "P0", "split": "probe"}]
    rows += [{"path": "d.png", "label": -1, "identity": "D0", "split": "distractor"}]
    return validate_manifest(pd.DataFrame(rows))


def test_sample_size_is_ratio_times_labelled_and_capped_by_the_pool():
    m = _manifest()  # 6 labelled, 12 unlabelled
    s = sample_unlabelled(m, 1.0, seed=0)
    assert len(s.index) == 6 and not s.capped
    assert (m["split"].to_numpy()[s.index] == "unlabelled").all()
    assert list(s.index) == sorted(s.index)
    big = sample_unlabelled(m, 5.0, seed=0)
    assert big.requested == 30 and big.available == 12 and big.capped and len(big.index) == 12
    assert big.describe()["effective_ratio"] == 2.0


def test_sample_is_seeded_and_nested_across_ratios():
    m = _manifest(unlabelled_ids=10)
    a, b = sample_unlabelled(m, 1.0, seed=3), sample_unlabelled(m, 1.0, seed=3)
    assert np.array_equal(a.index, b.index)
    assert not np.array_equal(a.index, sample_unlabelled(m, 1.0, seed=4).index)
    larger = sample_unlabelled(m, 2.0, seed=3)
    assert set(a.index) <= set(larger.index)


@pytest.mark.parametrize("ratio", [0, -1.0])
def test_sample_rejects_non_positive_ratio(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        sample_unlabelled(_manifest(), ratio, seed=0)


def test_merge_drops_singletons_and_low_confidence_and_offsets_ids():
    m = _manifest()  # labelled classes 0..2; unlabelled rows 6..17
    index = np.arange(6, 14)  # U0 x3, U1 x3, U2 x2
    pred = np.array([7, 7, 7, 9, 9, -1, 4, 5])  # 7: pure U0; 9: two U1; -1 unclustered; 4,5 singletons
    conf = np.array([0.9, 0.8, 0.2, 0.7, 0.6, 0.0, 0.9, 0.9], dtype=np.float32)
    frame, summary = merge_pseudo_labels(m, index, pred, conf, min_cluster_size=2, min_confidence=0.5)
    frame = validate_manifest(frame)
    pseudo = frame[frame["label_source"] == "pseudo"]
    gt = frame[frame["label_source"] == "gt"]
    assert len(gt) == 6 and (gt["weight"] == 1.0).all() and set(gt["label"]) == {0, 1, 2}
    # Cluster 7 loses its 0.2 member (still 2 left), cluster 9 keeps both, singletons 4/5 go.
    assert sorted(pseudo["path"]) == ["u0_0.png", "u0_1.png", "u1_0.png", "u1_1.png"]
    assert sorted(set(pseudo["label"])) == [3, 4]  # contiguous right after the labelled ids
    assert pseudo.set_index("path").loc["u0_0.png", "weight"] == pytest.approx(0.9)
    assert not frame["split"].isin(["probe", "distractor"]).any()
    assert summary.n_kept == 4 and summary.n_pseudo_classes == 2
    assert summary.dropped_unclustered == 1 and summary.dropped_low_confidence == 1
    assert summary.dropped_small_clusters == 2
    assert summary.purity == 1.0 and summary.identities_kept == 2


def test_merge_confidence_filter_can_shrink_a_cluster_below_min_size():
    m = _manifest()
    index = np.arange(6, 9)
    frame, summary = merge_pseudo_labels(m, index, np.array([1, 1, 2]), np.array([0.9, 0.1, 0.9]), min_confidence=0.5)
    assert summary.n_kept == 0 and summary.n_pseudo_classes == 0 and summary.purity is None
    assert (frame["label_source"] == "gt").all()


def test_merge_purity_counts_the_majority_identity_of_each_kept_cluster():
    m = _manifest()
    index = np.arange(6, 12)  # U0 x3, U1 x3
    pred = np.zeros(6, dtype=np.int64)  # everything in one cluster: majority 3 of 6
    _, summary = merge_pseudo_labels(m, index, pred)
    assert summary.purity == pytest.approx(0.5) and summary.identities_kept == 2
    assert summary.kept_fraction == 1.0


def test_merge_without_ground_truth_reports_no_purity():
    m = _manifest()
    m.loc[m["split"] == "unlabelled", "identity"] = ""
    _, summary = merge_pseudo_labels(m, np.arange(6, 12), np.array([0, 0, 0, 1, 1, 1]))
    assert summary.n_kept == 6 and summary.purity is None


def test_merge_rejects_misaligned_inputs():
    m = _manifest()
    with pytest.raises(DataError, match="pred_labels"):
        merge_pseudo_labels(m, np.arange(6, 10), np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match="not 'unlabelled'"):
        merge_pseudo_labels(m, np.arange(0, 4), np.zeros(4, dtype=np.int64))


def test_upper_bound_uses_ground_truth_identities_as_classes():
    m = _manifest()
    m.loc[6, "identity"] = "L1"  # an unlabelled image of a labelled person keeps that person's class
    frame, summary = upper_bound_frame(m, np.arange(6, 12))
    frame = validate_manifest(frame)
    pseudo = frame[frame["label_source"] == "pseudo"].set_index("path")
    assert pseudo.loc["u0_0.png", "label"] == 1
    assert pseudo.loc["u0_1.png", "label"] == pseudo.loc["u0_2.png", "label"] == 3
    assert set(pseudo["label"]) == {1, 3, 4}
    assert summary.n_kept == 6 and summary.purity == 1.0


def test_lower_bound_is_the_labelled_rows_only():
    frame = lower_bound_frame(_manifest())
    assert len(frame) == 6 and (frame["split"] == "labelled").all() and (frame["label_source"] == "gt").all()
