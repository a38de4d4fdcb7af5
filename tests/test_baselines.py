"""Baselines behind the Clusterer interface: what each computes, threshold tuning on labelled data, save/load."""

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from clustering.base import available_methods, make_method
from clustering.benchmark_features import benchmark_splits
from clustering.knn import build_knn
from clustering.metrics import evaluate_partition
from semiface.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def splits():
    return benchmark_splits(60, [60], seed=2)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming of cluster ids."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_baselines_are_registered():
    assert {"knn_uf"} <= set(available_methods())


def test_knn_uf_with_all_neighbours_is_components_of_the_thresholded_cosine_matrix(splits):
    features = splits.test_features[0][:400]
    tau = 0.55
    method = make_method("knn_uf", k=len(features), tau=tau)
    pred = method.fit_predict(features, build_knn(features, len(features)))
    adjacency = (features @ features.T) > tau
    np.fill_diagonal(adjacency, False)
    _, expected = connected_components(csr_matrix(adjacency), directed=False)
    assert _same_partition(pred, expected)
    assert method.confidence_.shape == (len(features),) and (method.confidence_[np.bincount(pred)[pred] > 1] > tau).all()


def test_knn_uf_tunes_tau_on_labelled_data_and_transfers(splits):
    method = make_method("knn_uf", k=20)
    with pytest.raises(ConfigError, match="call fit"):
        method.fit_predict(splits.test_features[0], None)
    method.fit(splits.train_features, splits.train_labels)
    table = method.tuning_
    best = table.loc[((table["pairwise_f"] + table["bcubed_f"]) / 2).idxmax(), "tau"]
    assert method.tau_ == best and method.tau_ in method.taus
    # the tuned tau beats the grid's ends on the unseen test part
    test_x, test_y = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(test_x, 20)
    tuned = evaluate_partition(test_y, method.fit_predict(test_x, graph))["pairwise_f"]
    for extreme in (min(method.taus), max(method.taus)):
        other = make_method("knn_uf", k=20, tau=extreme).fit_predict(test_x, graph)
        assert tuned > evaluate_partition(test_y, other)["pairwise_f"]


def test_knn_uf_tuning_uses_a_slice_of_whole_identities(splits):
    method = make_method("knn_uf", k=10, tune_samples=300).fit(splits.train_features, splits.train_labels)
    assert method.tuning_ is not None and method.tau_ is not None


def test_saved_baseline_loads_with_its_tuned_tau(tmp_path, splits):
    method = make_method("knn_uf", k=10, tune_samples=500).fit(splits.train_features, splits.train_labels)
    path = method.save(tmp_path / "clusterer.pt")
    loaded = type(method).load(path)
    assert loaded.tau_ == method.tau_ and loaded.k == 10 and loaded.taus == method.taus
    graph = build_knn(splits.test_features[0], 10)
    np.testing.assert_array_equal(loaded.fit_predict(splits.test_features[0], graph), method.fit_predict(splits.test_features[0], graph))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="bad.json"):
        type(method).load(tmp_path / "bad.json")


def test_bad_parameters_and_inputs(splits):
    with pytest.raises(ConfigError, match="bogus"):
        make_method("knn_uf", bogus=1)
    with pytest.raises(ConfigError, match="k must be"):
        make_method("knn_uf", k=1)
    features = splits.test_features[0]
    with pytest.raises(DataError, match="rows"):
        make_method("knn_uf", tau=0.5, k=5).fit_predict(features, build_knn(features[:50], 5))
    bad = features.copy()
    bad[3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        make_method("knn_uf", tau=0.5, k=5).fit_predict(bad, None)
    with pytest.raises(DataError, match="labels"):
        make_method("knn_uf", k=5).fit(features, np.zeros(3, dtype=np.int64))
