"""Clustering real faces (../shared/data; skipped when absent).

The identity split of the image folders (used by ``bench.real_face_features``) is checked in the
default run (a file scan, no decoding). The slow tests cluster the 128-d dlib descriptors of the same
images (../shared/data/features): the learned methods, fitted on one identity half, against every
tuned baseline on the other half.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.clustering_table import FACET
from bench.real_face_features import RealFaceConfig, scan_folders, split_identities
from clustering.base import make_method
from clustering.metrics import evaluate_partition


@pytest.fixture(scope="module")
def files(shared_data_dir):
    return scan_folders(shared_data_dir)


def test_split_is_disjoint_by_identity_and_keeps_singletons_out_of_the_backbone(files) -> None:
    frame = split_identities(files, RealFaceConfig())
    parts = frame.groupby("identity")["part"].nunique()
    assert (parts == 1).all(), "an identity is in two parts"
    assert set(frame["part"]) == {"backbone", "labelled", "unlabelled"}
    counts = frame.groupby("identity").size()
    backbone_ids = frame.loc[frame["part"] == "backbone", "identity"].unique()
    assert (counts[backbone_ids] >= 2).all()
    for folder in ("lfw", "yale_b", "orl"):
        multi = counts[[i for i in counts.index if i.startswith(f"{folder}/") and counts[i] >= 2]]
        share = frame[frame["identity"].isin(multi.index)].groupby("part")["identity"].nunique() / len(multi)
        assert share["backbone"] == pytest.approx(0.5, abs=0.03)
        assert share["labelled"] == pytest.approx(0.25, abs=0.03)
    # labels: one integer per identity
    assert frame.groupby("identity")["label"].nunique().max() == 1
    assert frame["label"].nunique() == frame["identity"].nunique()


def test_split_depends_on_the_seed_only_and_so_does_the_cache_key(files) -> None:
    base = RealFaceConfig()
    assert split_identities(files, base)["part"].tolist() == split_identities(files, RealFaceConfig())["part"].tolist()
    other = RealFaceConfig(seed=1)
    assert split_identities(files, base)["part"].tolist() != split_identities(files, other)["part"].tolist()
    assert base.key(files) != other.key(files)
    assert base.key(files) != RealFaceConfig(backbone=replace(base.backbone, epochs=3)).key(files)
    # how a run executes (threads, device, progress output) does not make a new cache entry
    assert base.key(files) == RealFaceConfig(backbone=replace(base.backbone, verbose=True, device="cpu")).key(files)
    assert base.key(files) != base.key(files.iloc[1:])


@pytest.mark.slow
def test_facet_learns_from_the_labels_of_real_faces(dlib_split) -> None:
    """FaceT fitted on the labelled half with its labels shuffled (same features, no identity signal)
    clusters the other half worse than FaceT fitted on the true labels."""
    s = dlib_split
    shuffled = np.random.default_rng(0).permutation(s.labelled_labels)
    scores = {}
    for name, labels in (("true", s.labelled_labels), ("shuffled", shuffled)):
        model = make_method("facet+infomap", **FACET).fit(s.labelled_features, labels)
        scores[name] = evaluate_partition(s.unlabelled_labels, model.fit_predict(s.unlabelled_features, None))
    assert scores["true"]["pairwise_f"] >= scores["shuffled"]["pairwise_f"] + 0.05, scores
    assert scores["true"]["bcubed_f"] >= scores["shuffled"]["bcubed_f"] + 0.02, scores
