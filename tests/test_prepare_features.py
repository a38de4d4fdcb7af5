"""The flow's ``features`` data source: learn-to-cluster parts into one features.npy + manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiface.errors import DataError
from semiface.features import load_features, save_features, save_meta
from semiface.manifest import read_manifest
from tasks.prepare_data import _prepare_features, data_options_for, required_inputs


def write_part(root: Path, part: str, features: np.ndarray, labels: np.ndarray) -> None:
    (root / "features").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    save_features(root / "features" / f"{part}.bin", features)
    save_meta(root / "labels" / f"{part}.meta", labels)


def prepare(root: Path, out: Path, **options: object) -> tuple[dict, dict]:
    options = data_options_for("features", options)
    external = {name: str(path) for name, path in required_inputs("features", str(root), options).items()}
    out.mkdir()
    return _prepare_features(out, external, options)


def test_dimension_is_read_from_the_label_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labelled, unlabelled = rng.standard_normal((6, 48)), rng.standard_normal((4, 48))
    write_part(tmp_path / "ltc", "part0_train", labelled, np.array([7, 7, 3, 3, 9, 9]))
    write_part(tmp_path / "ltc", "part1_test", unlabelled, np.array([1, 1, 2, 2]))
    outputs, _ = prepare(tmp_path / "ltc", tmp_path / "out")
    features = np.asarray(load_features(outputs["features"]))
    assert features.shape == (10, 48)
    expected = np.concatenate([labelled, unlabelled]).astype(np.float32)
    np.testing.assert_allclose(features, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-5)
    manifest = read_manifest(outputs["manifest"])
    assert manifest["label"].tolist() == [1, 1, 0, 0, 2, 2, -1, -1, -1, -1]
    assert manifest["split"].tolist() == ["labelled"] * 6 + ["unlabelled"] * 4


def test_parts_of_different_dimensions_name_the_unlabelled_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_part(tmp_path / "ltc", "part0_train", rng.standard_normal((4, 48)), np.array([0, 0, 1, 1]))
    write_part(tmp_path / "ltc", "part1_test", rng.standard_normal((4, 32)), np.array([0, 0, 1, 1]))
    with pytest.raises(DataError, match=r"part1_test\.bin.*48"):
        prepare(tmp_path / "ltc", tmp_path / "out")
