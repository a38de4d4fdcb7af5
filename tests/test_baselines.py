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
    assert {"knn_uf", "infomap", "dbscan", "hac", "kmeans_oracle"} <= set(available_methods())


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
    assert method.tau_ == best and method.taus is None  # candidates derived from the labelled data
    assert set(table["pass"]) == {"coarse", "fine"}
    # the tuned tau beats the ends of the candidates tried on the unseen test part
    test_x, test_y = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(test_x, 20)
    tuned = evaluate_partition(test_y, method.fit_predict(test_x, graph))["pairwise_f"]
    for extreme in (table["tau"].min(), table["tau"].max()):
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


@pytest.fixture(scope="module")
def small(splits):
    """300 test samples and their full kNN graph (every sample is everyone's neighbour)."""
    features = splits.test_features[0][:300]
    return features, splits.test_labels[0][:300], build_knn(features, len(features))


def test_dbscan_with_all_neighbours_equals_sklearn_on_the_full_distance_matrix(small):
    from sklearn.cluster import DBSCAN

    features, _, graph = small
    pred = make_method("dbscan", k=len(features), eps=0.45, min_samples=3).fit_predict(features, graph)
    distances = np.clip(1.0 - features.astype(np.float64) @ features.T.astype(np.float64), 0.0, None)
    expected = DBSCAN(eps=0.45, min_samples=3, metric="precomputed").fit_predict(distances)
    np.testing.assert_array_equal(pred == -1, expected == -1)
    assert _same_partition(pred[pred >= 0], expected[expected >= 0]) and (pred >= 0).any()


def test_hac_with_all_neighbours_equals_sklearn_agglomerative(small):
    from sklearn.cluster import AgglomerativeClustering

    features, _, graph = small
    pred = make_method("hac", k=len(features), distance_threshold=0.5).fit_predict(features, graph)
    expected = AgglomerativeClustering(
        n_clusters=None, distance_threshold=0.5, metric="cosine", linkage="average"
    ).fit_predict(features)
    assert _same_partition(pred, expected) and 1 < len(np.unique(pred)) < len(pred)


def test_infomap_baseline_beats_knn_uf_on_benchmark_features(splits):
    test_x, test_y = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(test_x, 20)
    scores = {}
    for name in ("knn_uf", "infomap"):
        method = make_method(name, k=20).fit(splits.train_features, splits.train_labels)
        pred = method.fit_predict(test_x, graph)
        assert method.confidence_.shape == (len(test_x),)
        scores[name] = evaluate_partition(test_y, pred)["pairwise_f"]
    assert scores["infomap"] > scores["knn_uf"] + 0.05


def test_kmeans_oracle_needs_and_uses_the_true_number_of_identities(small):
    features, labels, _ = small
    method = make_method("kmeans_oracle")
    assert method.is_oracle and not method.needs_training
    with pytest.raises(ConfigError, match="n_clusters"):
        method.fit_predict(features, None)
    n_true = len(np.unique(labels))
    pred = make_method("kmeans_oracle", n_clusters=n_true).fit_predict(features, None)
    assert len(np.unique(pred)) == n_true and evaluate_partition(labels, pred)["pairwise_f"] > 0.3


@pytest.mark.parametrize("name", ["knn_uf", "infomap", "dbscan", "hac"])
def test_every_threshold_baseline_tunes_saves_and_loads(tmp_path, small, name):
    features, labels, graph = small
    method = make_method(name, k=10).fit(features, labels, graph)
    assert method.tau_ in set(method.tuning_[method.threshold_field]) and len(method.tuning_) > 10
    loaded = type(method).load(method.save(tmp_path / f"{name}.json"))
    np.testing.assert_array_equal(loaded.fit_predict(features, graph), method.fit_predict(features, graph))
