"""Generated MS1M-like features: the cosine statistics the module states, long tail, seeds, splits, difficulty."""

import numpy as np
import pytest

from clustering.benchmark_features import BenchmarkConfig, benchmark_splits, generate_benchmark_features
from clustering.knn import build_knn
from clustering.metrics import evaluate_partition
from clustering.union_find import connected_components
from semiface.errors import ConfigError

N_IDENTITIES = 300


@pytest.fixture(scope="module")
def generated() -> tuple[np.ndarray, np.ndarray]:
    return generate_benchmark_features(N_IDENTITIES, seed=3)


def _pair_cosines(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of all same-identity pairs, and of 100K random different-identity pairs."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    intra = []
    for members in np.split(order, bounds):
        a, b = np.triu_indices(len(members), 1)
        intra.append(np.einsum("ij,ij->i", features[members[a]], features[members[b]]))
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(labels), (2, 100_000))
    other = labels[i] != labels[j]
    inter = np.einsum("ij,ij->i", features[i[other]], features[j[other]])
    return np.concatenate(intra), inter


def test_shapes_units_and_label_range(generated):
    features, labels = generated
    assert features.dtype == np.float32 and features.shape[1] == 256
    assert labels.dtype == np.int64 and labels.shape == (len(features),)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert set(np.unique(labels)) == set(range(N_IDENTITIES))


def test_cosine_statistics_resemble_arcface_features(generated):
    intra, inter = _pair_cosines(*generated)
    # intra-identity mostly in 0.4-0.8 (the stated band), centred inside it
    assert ((intra > 0.4) & (intra < 0.8)).mean() > 0.75
    assert 0.45 < np.median(intra) < 0.7
    # inter-identity centred on 0, narrow, with a tail (look-alike families, shared nuisances)
    assert abs(inter.mean()) < 0.01
    assert 0.05 < inter.std() < 0.12
    assert np.quantile(inter, 0.999) > 0.2
    assert (inter > 0.4).mean() < 1e-3


def test_images_per_identity_are_long_tailed(generated):
    counts = np.bincount(generated[1])
    config = BenchmarkConfig()
    assert counts.min() >= config.images_min and counts.max() <= config.images_max
    assert 0.75 * config.images_median <= np.median(counts) <= 1.35 * config.images_median
    # a heavy right tail: the biggest identities hold many times the median
    assert counts.max() > 6 * np.median(counts)
    assert counts.mean() > np.median(counts)


def test_same_seeds_same_arrays_other_seed_other_arrays():
    a_features, a_labels = generate_benchmark_features(20, seed=5)
    b_features, b_labels = generate_benchmark_features(20, seed=5)
    np.testing.assert_array_equal(a_features, b_features)
    np.testing.assert_array_equal(a_labels, b_labels)
    c_features, _ = generate_benchmark_features(20, seed=6)
    assert c_features.shape != a_features.shape or not np.array_equal(c_features, a_features)


def test_splits_train_part_and_nested_growing_test_parts():
    splits = benchmark_splits(30, [10, 20, 40], seed=1)
    assert set(np.unique(splits.train_labels)) == set(range(30))
    sizes = [len(labels) for labels in splits.test_labels]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    for count, features, labels in zip([10, 20, 40], splits.test_features, splits.test_labels, strict=True):
        assert len(features) == len(labels) and set(np.unique(labels)) == set(range(count))
    # nested: the 10-identity part is exactly the first identities of the 40-identity part
    small, big = splits.test_features[0], splits.test_features[-1]
    np.testing.assert_array_equal(small, big[splits.test_labels[-1] < 10])
    # test identities are new people: no test image sits on a train identity's centre
    train_centres = np.stack([splits.train_features[splits.train_labels == c].mean(0) for c in range(30)])
    test_centres = np.stack([big[splits.test_labels[-1] == c].mean(0) for c in range(40)])
    train_centres /= np.linalg.norm(train_centres, axis=1, keepdims=True)
    test_centres /= np.linalg.norm(test_centres, axis=1, keepdims=True)
    assert (test_centres @ train_centres.T).max() < 0.6


def test_knn_threshold_baseline_lands_well_below_perfect(generated):
    features, labels = generated
    graph = build_knn(features, 10)
    best = 0.0
    for tau in np.arange(0.3, 0.85, 0.05):
        src, dst, _ = graph.edges(min_sim=float(tau))
        scores = evaluate_partition(labels, connected_components(len(labels), src, dst))
        best = max(best, scores["pairwise_f"])
    # the best single threshold clusters something, but far from perfectly
    assert 0.4 < best < 0.92


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="spread_min"):
        BenchmarkConfig(spread_min=2.0, spread_max=1.0)
    with pytest.raises(ConfigError, match="n_identities"):
        generate_benchmark_features(0)
    with pytest.raises(ConfigError, match="increasing"):
        benchmark_splits(5, [20, 10])
