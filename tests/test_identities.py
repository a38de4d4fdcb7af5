"""Identity splits and slices, and that every method tunes on the same slice of the labelled set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clustering.evaluate
from clustering.base import make_method
from clustering.identities import identity_slice, split_by_identity, validation_slice
from clustering.metrics import evaluate_partition


def blobs(identities: int, per: int, dim: int = 16, noise: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(identities), per)
    features = rng.normal(size=(identities, dim))[labels] + noise * rng.normal(size=(len(labels), dim))
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32), labels


def test_split_by_identity_keeps_identities_whole() -> None:
    labels = np.repeat(np.arange(10), 3)
    train, val = split_by_identity(labels, 0.2, seed=0)
    assert len(np.unique(labels[val])) == 2 and not set(labels[train]) & set(labels[val])
    assert sorted(np.concatenate([train, val])) == list(range(30))
    assert len(split_by_identity(labels, 0.0, seed=0)[1]) == 0
    assert len(np.unique(labels[split_by_identity(labels, 0.01, seed=0)[1]])) == 1  # at least one held out
    assert len(split_by_identity(np.zeros(5, dtype=int), 0.5, seed=0)[1]) == 0  # one identity: nothing to hold out


def test_identity_slices_are_whole_identities_and_nested() -> None:
    labels = np.random.default_rng(1).integers(0, 40, size=400)
    small, large = identity_slice(labels, 60, seed=3), identity_slice(labels, 200, seed=3)
    assert len(small) <= 60 and len(large) <= 200 and len(large) > len(small)
    assert set(small) < set(large)
    for rows in (small, large):
        inside = np.isin(np.arange(len(labels)), rows)
        assert not set(labels[inside]) & set(labels[~inside])
    assert len(identity_slice(labels, 1, seed=3)) >= 1  # always one identity


def test_validation_slice_always_holds_a_heldout_identity() -> None:
    labels = np.repeat(np.arange(20), 5)
    heldout = labels == 17
    plain = identity_slice(labels, 10, seed=0)
    rows = validation_slice(labels, heldout, 10, seed=0)
    assert set(plain) <= set(rows) and heldout[rows].sum() == 5
    assert list(validation_slice(labels, np.ones(100, dtype=bool), 10, seed=0)) == list(plain)


@pytest.mark.parametrize("method, params", [
    ("facet", dict(preset="demo", hop1=8, hop2=3, heads=2, head_dim=8, ff_dim=32, epochs=2, device="cpu")),
    ("clusformer", dict(k=8, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                        dim_feedforward=32, epochs=2, device="cpu")),
])
def test_learned_methods_tune_on_the_baselines_slice_and_score_epochs_on_a_smaller_one(monkeypatch, method, params) -> None:
    torch.set_num_threads(1)
    features, labels = blobs(60, 6)
    calls: list[np.ndarray] = []
    real = clustering.evaluate.tune_link_threshold

    def recording(labels_seen, *args, **kwargs):
        calls.append(np.sort(labels_seen))
        return real(labels_seen, *args, **kwargs)

    monkeypatch.setattr(clustering.evaluate, "tune_link_threshold", recording)
    model = make_method(method, **params, tune_samples=180, epoch_val_samples=60).fit(features, labels)
    tune_rows = identity_slice(labels, 180, seed=0)
    baseline = make_method("knn_uf", k=8, tune_samples=180).fit(features, labels)
    assert len(baseline.tuning_) > 1
    *epochs, final = calls
    assert len(epochs) == 2 and all(len(c) <= 66 for c in epochs)  # <= 60 rows, or one held-out identity added
    assert all(set(c) <= set(final) for c in epochs)  # the epoch slice is inside the tune slice
    assert np.array_equal(final, np.sort(labels[tune_rows]))  # the baselines' rows, exactly
    # The tuned tau still clusters the labelled set well.
    assert evaluate_partition(labels, model.fit_predict(features, None))["pairwise_f"] > 0.6


def test_tune_samples_must_be_positive() -> None:
    from semiface.errors import ConfigError

    for method in ("facet", "clusformer", "knn_uf"):
        with pytest.raises(ConfigError, match="tune_samples"):
            make_method(method, tune_samples=0)


def test_the_flow_sizes_every_tuning_slice_like_the_set_to_cluster() -> None:
    from tasks.train_clusterer import with_tune_samples

    assert with_tune_samples("facet", {"preset": "demo"}, 5000) == {"preset": "demo", "tune_samples": 5000}
    assert with_tune_samples("clusformer+infomap", {}, 5000) == {"tune_samples": 5000}
    assert with_tune_samples("infomap", {}, 5000) == {"tune_samples": 5000}
    assert with_tune_samples("knn_uf", {"tune_samples": 10}, 5000) == {"tune_samples": 10}  # the user's wins
    assert with_tune_samples("pair_gbdt", {}, 5000) == {"tune_samples": 5000}  # tunes as FaceT does
    assert with_tune_samples("facet", {}, None) == {}
