"""Clustering on features of the real face folders (../shared/data; skipped when absent).

The identity split is checked in the default run (a file scan, no decoding). The slow tests build
the features with ``bench.real_face_features`` (a CPU backbone, about 10 minutes the first time, then
cached under bench/results/real_faces/ keyed by config and file list) and compare the learned
clusterers, fitted on the labelled part, with knn_uf on the unseen unlabelled part.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.clustering_table import CLUSFORMER, FACET, K
from bench.real_face_features import (
    DEFAULT_CACHE,
    RealFaceConfig,
    real_face_features,
    scan_folders,
    split_identities,
)
from clustering.base import make_method
from clustering.evaluate import run_harness
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


@pytest.fixture(scope="module")
def real_features(shared_data_dir):
    """Backbone features of the real folders, from the bench module's cache (built there when missing)."""
    return real_face_features(shared_data_dir, DEFAULT_CACHE)


@pytest.mark.slow
def test_learned_clusterers_against_knn_uf_on_real_faces(real_features) -> None:
    """Issue 5/6 Done-when on the real folders, as far as it holds (settings of bench/clustering_table.py,
    fixed a priori, not tuned on the unlabelled part).

    Measured (seed 0, 1,183 labelled / 1,184 unseen identities, 2,474 images to cluster): knn_uf
    FP 0.181 FB 0.760 noise 0.748; FaceT FP 0.237 FB 0.696 noise 0.611; Clusformer FP 0.306 FB
    0.696 noise 0.194. The learned links win on pairwise F and on the noise left in clusters but
    LOSE about 6 points of BCubed F (their tuned tau is high, most LFW images stay singletons):
    the issues' ">= 5 points of FP and FB" is not met here, and this test does not pretend it is.
    """
    f = real_features
    frame = run_harness(["knn_uf", "facet", "clusformer"], f.labelled_features, f.labelled_labels,
                        f.unlabelled_features, f.unlabelled_labels, K,
                        method_params={"facet": FACET, "clusformer": CLUSFORMER}).set_index("method")
    base = frame.loc["knn_uf"]
    for name in ("facet", "clusformer"):
        ours = frame.loc[name]
        assert ours["pairwise_f"] >= base["pairwise_f"] + 0.03, (name, ours.to_dict(), base.to_dict())
        assert ours["noise_ratio"] < base["noise_ratio"] - 0.1, (name, ours.to_dict(), base.to_dict())


@pytest.mark.slow
def test_facet_learns_from_the_labels_of_real_faces(real_features) -> None:
    """FaceT fitted on the labelled part with its labels shuffled (same features, no identity signal)
    clusters the unseen part worse than FaceT fitted on the true labels."""
    f = real_features
    shuffled = np.random.default_rng(0).permutation(f.labelled_labels)
    scores = {}
    for name, labels in (("true", f.labelled_labels), ("shuffled", shuffled)):
        model = make_method("facet", **FACET).fit(f.labelled_features, labels)
        scores[name] = evaluate_partition(f.unlabelled_labels, model.fit_predict(f.unlabelled_features, None))
    assert scores["true"]["pairwise_f"] >= scores["shuffled"]["pairwise_f"] + 0.05, scores
    assert scores["true"]["bcubed_f"] >= scores["shuffled"]["bcubed_f"] + 0.02, scores
