"""Benchmark kNN layouts (learn-to-cluster npz, L-GCN npy) read back to the graph build_knn makes."""

from __future__ import annotations

import numpy as np
import pytest

from clustering.knn import build_knn
from clustering.layouts import read_lgcn_knn, read_ltc_knn, write_ltc_knn
from semiface.errors import DataError


@pytest.fixture()
def features() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(60, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_learn_to_cluster_round_trip(tmp_path, features):
    graph = build_knn(features, 8)
    path = write_ltc_knn(graph, tmp_path / "faiss_k_8.npz")
    with np.load(path) as archive:
        assert archive["data"].shape == (60, 2, 8)
        assert np.all(np.diff(archive["data"][:, 1, :], axis=1) >= -1e-6)  # distances ascending
    back = read_ltc_knn(path)
    np.testing.assert_array_equal(back.nbrs, graph.nbrs)
    np.testing.assert_allclose(back.sims, graph.sims, atol=1e-6)


def test_learn_to_cluster_rows_are_resorted_with_self_first(tmp_path):
    # row 0 lists a duplicate (distance 0) before itself and is unsorted
    data = np.array(
        [[[1, 2, 0], [0.0, 0.5, 0.0]], [[1, 0, 2], [0.0, 0.0, 0.3]], [[2, 1, 0], [0.0, 0.3, 0.5]]], dtype=np.float32
    )
    np.savez(tmp_path / "k.npz", data=data)
    graph = read_ltc_knn(tmp_path / "k.npz")
    np.testing.assert_array_equal(graph.nbrs[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(graph.nbrs[0], [0, 1, 2])
    assert np.all(np.diff(graph.sims[:, 1:], axis=1) <= 0)


def test_lgcn_graph_gets_similarities_from_features(tmp_path, features):
    graph = build_knn(features, 6)
    np.save(tmp_path / "knn.graph.npy", graph.nbrs)
    back = read_lgcn_knn(tmp_path / "knn.graph.npy", features)
    np.testing.assert_array_equal(back.nbrs, graph.nbrs)
    np.testing.assert_allclose(back.sims, graph.sims, atol=1e-5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((3, 3, 2), dtype=np.float32), r"shape \(N, 2, k\)"),
        (np.array([[[0, 5]], [[1, 0]]], dtype=np.float32).reshape(2, 1, 2).repeat(2, 1), "outside 0..1"),
        (np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], dtype=np.float32), "lack the query itself"),
    ],
)
def test_bad_learn_to_cluster_files_name_the_file(tmp_path, data, message):
    path = tmp_path / "bad.npz"
    np.savez(path, data=data)
    with pytest.raises(DataError, match=message) as info:
        read_ltc_knn(path)
    assert "bad.npz" in str(info.value)


def test_missing_and_mismatched_files(tmp_path, features):
    with pytest.raises(DataError, match="not found"):
        read_ltc_knn(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", nbrs=np.zeros((2, 2)))
    with pytest.raises(DataError, match="lacks array 'data'"):
        read_ltc_knn(tmp_path / "other.npz")
    np.save(tmp_path / "g.npy", np.zeros((5, 3), dtype=np.int64))
    with pytest.raises(DataError, match="5 rows but there are 60"):
        read_lgcn_knn(tmp_path / "g.npy", features)
