"""The threshold sweep, the harness (fit on labelled data, score on the rest) and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clustering.benchmark_features import benchmark_splits
from clustering.evaluate import main, run_harness, sweep_threshold
from semiface.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def splits():
    return benchmark_splits(40, [40], seed=4)


def test_sweep_threshold_scores_every_tau_and_picks_the_best():
    labels = np.array([0, 0, 0, 1, 1, 1])
    src, dst = np.array([0, 1, 3, 4, 2]), np.array([1, 2, 4, 5, 3])
    weight = np.array([0.9, 0.8, 0.9, 0.7, 0.6])  # 2-3 is the only wrong link
    table, best = sweep_threshold(labels, 6, src, dst, weight, [0.5, 0.65, 0.85])
    assert list(table["tau"]) == [0.5, 0.65, 0.85] and best == 0.65
    assert table.loc[table["tau"] == 0.65, "pairwise_f"].item() == pytest.approx(1.0)
    with pytest.raises(DataError, match="labels"):
        sweep_threshold(labels[:3], 6, src, dst, weight, [0.5])


def test_harness_fits_on_labelled_part_and_scores_every_method(splits):
    frame = run_harness(
        ["knn_uf", "infomap", "kmeans_oracle"], splits.train_features, splits.train_labels,
        splits.test_features[0], splits.test_labels[0], k=15,
    )
    assert list(frame["method"]) == ["knn_uf", "infomap", "kmeans_oracle"]
    assert list(frame["oracle"]) == [False, False, True]
    for column in ("pairwise_f", "bcubed_f", "nmi", "noise_ratio", "n_clusters", "fit_seconds", "cluster_seconds"):
        assert frame[column].notna().all()
    assert frame.loc[frame["method"] == "kmeans_oracle", "n_clusters"].item() == 40
    assert frame["pairwise_f"].between(0.3, 1.0).all()
    assert frame.attrs["n_test"] == len(splits.test_labels[0]) and frame.attrs["k"] == 15


def test_harness_never_tunes_on_the_labels_it_scores_with(splits):
    """Shuffling the test labels changes the scores but not what the methods predict or tune."""
    args = (["knn_uf", "infomap"], splits.train_features, splits.train_labels, splits.test_features[0])
    truth = splits.test_labels[0]
    shuffled = np.random.default_rng(0).permutation(truth)
    real, fake = run_harness(*args, truth, k=15), run_harness(*args, shuffled, k=15)
    for column in ("tau", "n_clusters", "n_singletons"):
        np.testing.assert_array_equal(real[column], fake[column])
    assert (real["pairwise_f"] > fake["pairwise_f"] + 0.3).all()


def test_harness_bad_inputs(splits):
    x, y = splits.test_features[0], splits.test_labels[0]
    with pytest.raises(DataError, match="labels"):
        run_harness(["knn_uf"], None, None, x, y[:-1], k=5)
    with pytest.raises(DataError, match="dimension"):
        run_harness(["knn_uf"], x[:, :100], y, x, y, k=5)
    with pytest.raises(ConfigError, match="no labelled train features"):
        run_harness(["knn_uf"], None, None, x, y, k=5)
    with pytest.raises(ConfigError, match="not run"):
        run_harness(["knn_uf"], None, None, x, y, k=5, method_params={"hac": {"k": 3}})
    with pytest.raises(ConfigError, match="unknown clustering method"):
        run_harness(["nope"], None, None, x, y, k=5)


def test_cli_on_npy_files_prints_table_and_writes_csv_and_json(tmp_path, splits, capsys):
    np.save(tmp_path / "train.npy", splits.train_features)
    np.save(tmp_path / "train_labels.npy", splits.train_labels)
    np.save(tmp_path / "test.npy", splits.test_features[0])
    np.save(tmp_path / "test_labels.npy", splits.test_labels[0])
    out = tmp_path / "out"
    code = main([
        "--method", "knn_uf,infomap", "--param", "knn_uf.tau=0.6", "--k", "15",
        "--features", str(tmp_path / "test.npy"), "--labels", str(tmp_path / "test_labels.npy"),
        "--train-features", str(tmp_path / "train.npy"), "--train-labels", str(tmp_path / "train_labels.npy"),
        "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "FP" in printed and "knn_uf" in printed and "infomap" in printed
    payload = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in payload["results"]] == ["knn_uf", "infomap"]
    assert payload["results"][0]["tau"] == 0.6 and payload["run"]["params"] == {"knn_uf": {"tau": 0.6}}
    assert (out / "results.csv").read_text().startswith("method,")
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json"]


def test_cli_reports_bad_input_files_by_name(tmp_path, splits, capsys):
    np.save(tmp_path / "test.npy", splits.test_features[0])
    np.save(tmp_path / "short.npy", splits.test_labels[0][:-2])
    code = main(["--method", "knn_uf", "--param", "knn_uf.tau=0.6",
                 "--features", str(tmp_path / "test.npy"), "--labels", str(tmp_path / "short.npy")])
    assert code == 2 and "short.npy" in capsys.readouterr().err
    code = main(["--method", "knn_uf", "--features", str(tmp_path / "missing.npy"), "--labels", str(tmp_path / "short.npy")])
    assert code == 2 and "missing.npy" in capsys.readouterr().err
    assert main(["--method", "knn_uf", "--param", "hac.k=3", "--benchmark", "5", "5"]) == 2


def test_rows_may_retune_an_earlier_rows_fitted_method(splits):
    """run_rows: two rows of one method with other parameters, and a row that retunes a fitted one
    (same trees, another partition) instead of fitting again."""
    from clustering.evaluate import HarnessRow, run_rows

    rows = [HarnessRow("gbdt", "pair_gbdt", {"max_iter": 30}), HarnessRow("gbdt small", "pair_gbdt", {"max_iter": 5}),
            HarnessRow("gbdt+infomap", "pair_gbdt", {"partition": "infomap"}, retune_of="gbdt")]
    frame = run_rows(rows, splits.train_features, splits.train_labels, splits.test_features[0], splits.test_labels[0], 10)
    assert frame["method"].tolist() == ["gbdt", "gbdt small", "gbdt+infomap"]
    assert (frame["pairwise_f"] > 0).all() and frame["pairwise_f"].nunique() == 3
    with pytest.raises(ConfigError, match="not an earlier row"):
        run_rows([HarnessRow("x", "pair_gbdt", {}, retune_of="y")], splits.train_features, splits.train_labels,
                 splits.test_features[0], splits.test_labels[0], 10)
    with pytest.raises(ConfigError, match="cannot be retuned"):
        run_rows([HarnessRow("a", "knn_uf"), HarnessRow("b", "knn_uf", {}, retune_of="a")], splits.train_features,
                 splits.train_labels, splits.test_features[0], splits.test_labels[0], 10)
