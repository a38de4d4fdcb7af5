"""FaceT's training budget: ``max_train_pivots`` trains each epoch on a fresh seeded sample of pivots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clustering.facet.train as facet_train
from clustering.base import make_method
from clustering.benchmark_features import BenchmarkConfig, generate_benchmark_features
from clustering.knn import KnnGraph
from clustering.torch_knn import torch_exact_knn
from semiface.errors import ConfigError

GATHER = facet_train.gather_sequences


@pytest.fixture(scope="module")
def labelled() -> tuple[np.ndarray, np.ndarray, KnnGraph]:
    features, labels = generate_benchmark_features(30, config=BenchmarkConfig(dim=32), seed=0)
    nbrs, sims = torch_exact_knn(features, 31, torch.device("cpu"))
    return features, labels, KnnGraph(nbrs=nbrs, sims=sims)


def _trained_pivots(monkeypatch, labelled, **params) -> list[np.ndarray]:
    """The pivots of each training batch of a 2-epoch fit, in order."""
    seen: list[np.ndarray] = []

    def recording(pivots, *args, **kwargs):
        seen.append(pivots.cpu().numpy().copy())
        return GATHER(pivots, *args, **kwargs)

    monkeypatch.setattr(facet_train, "gather_sequences", recording)
    features, labels, graph = labelled
    make_method("facet", preset="demo", epochs=2, val_fraction=0.0, tau=0.5, device="cpu", **params).fit(
        features, labels, graph)
    return seen


def test_each_epoch_trains_on_a_fresh_sample_of_the_budgeted_size(monkeypatch, labelled) -> None:
    n = len(labelled[1])
    batches = _trained_pivots(monkeypatch, labelled, max_train_pivots=80)
    assert [len(b) for b in batches] == [32, 32, 16] * 2  # ceil(80 / 32) batches an epoch, the last short
    epochs = [np.concatenate(batches[:3]), np.concatenate(batches[3:])]
    for pivots in epochs:
        assert len(np.unique(pivots)) == 80 and pivots.max() < n
    assert set(epochs[0]) != set(epochs[1])  # another sample each epoch
    again = _trained_pivots(monkeypatch, labelled, max_train_pivots=80)
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(batches))  # seeded: the same draws


def test_without_a_budget_every_row_is_a_pivot_each_epoch(monkeypatch, labelled) -> None:
    n = len(labelled[1])
    for budget in (None, 10 * n):  # a budget above the row count changes nothing
        batches = _trained_pivots(monkeypatch, labelled, max_train_pivots=budget)
        assert len(batches) == 2 * -(-n // 32)
        first = np.concatenate(batches[: len(batches) // 2])
        np.testing.assert_array_equal(np.sort(first), np.arange(n))


def test_a_budget_below_one_pivot_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_train_pivots"):
        make_method("facet", max_train_pivots=0)
