"""Feature files (.npy, learn-to-cluster .bin/.meta) and the feature checks, bad input included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semiface.errors import DataError
from semiface.features import check_features, l2_normalize, load_features, load_meta, save_features, save_meta


@pytest.fixture
def features() -> np.ndarray:
    return l2_normalize(np.random.default_rng(0).normal(size=(7, 16)))


@pytest.mark.parametrize("suffix", [".npy", ".bin"])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path: Path, features: np.ndarray, suffix: str, mmap: bool):
    path = save_features(tmp_path / f"f{suffix}", features)
    back = load_features(path, dim=16, mmap=mmap)
    np.testing.assert_array_equal(np.asarray(back), features)
    assert back.dtype == np.float32 and isinstance(back, np.memmap) == mmap
    assert [p.name for p in tmp_path.iterdir()] == [f"f{suffix}"]


def test_bin_is_raw_float32_without_header(tmp_path: Path, features: np.ndarray):
    path = save_features(tmp_path / "f.bin", features)
    assert path.stat().st_size == features.size * 4
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.float32), features.ravel())


def test_bin_dimension_defaults_to_256(tmp_path: Path):
    save_features(tmp_path / "f.bin", np.ones((3, 256), np.float32))
    assert load_features(tmp_path / "f.bin").shape == (3, 256)


@pytest.mark.parametrize("meta", ["f.meta", "../labels/f.meta"])
def test_bin_dimension_is_inferred_from_its_label_file(tmp_path: Path, meta: str):
    features = np.random.default_rng(0).standard_normal((5, 48)).astype(np.float32)
    (tmp_path / "features").mkdir()
    save_features(tmp_path / "features" / "f.bin", features)
    (tmp_path / "features" / meta).parent.mkdir(exist_ok=True)
    save_meta(tmp_path / "features" / meta, np.arange(5))
    np.testing.assert_array_equal(load_features(tmp_path / "features" / "f.bin"), features)


def test_bin_that_does_not_match_its_label_file_names_both(tmp_path: Path):
    save_features(tmp_path / "f.bin", np.ones((5, 48), np.float32))
    save_meta(tmp_path / "f.meta", np.arange(7))
    with pytest.raises(DataError, match=r"f\.bin.*7 float32 rows.*f\.meta"):
        load_features(tmp_path / "f.bin")


def test_bin_size_that_does_not_divide_names_the_numbers(tmp_path: Path, features: np.ndarray):
    save_features(tmp_path / "f.bin", features)  # 7 x 16 floats = 448 bytes
    with pytest.raises(DataError, match=r"448 bytes is not a whole number of float32 rows of dimension 10 \(40 bytes"):
        load_features(tmp_path / "f.bin", dim=10)
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes is not a whole number"):
        load_features(tmp_path / "e.bin", dim=16)


def test_npy_wrong_dimension_shape_and_dtype(tmp_path: Path, features: np.ndarray):
    save_features(tmp_path / "f.npy", features)
    with pytest.raises(DataError, match="expected 256 feature columns, found 16") as info:
        load_features(tmp_path / "f.npy", dim=256)
    assert info.value.source.endswith("f.npy")
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(DataError, match=r"expected a 2-D \[N, D\] array, found shape \(5,\)"):
        load_features(tmp_path / "v.npy")
    np.save(tmp_path / "d.npy", features.astype(np.float64))
    with pytest.raises(DataError, match="expected float32 features, found float64"):
        load_features(tmp_path / "d.npy")


def test_missing_corrupt_and_unknown_files(tmp_path: Path):
    with pytest.raises(DataError, match="feature file not found"):
        load_features(tmp_path / "absent.npy")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable .npy file"):
        load_features(tmp_path / "bad.npy")
    (tmp_path / "f.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="unknown feature file type '.txt'"):
        load_features(tmp_path / "f.txt")
    with pytest.raises(DataError, match="unknown feature file type '.csv'"):
        save_features(tmp_path / "f.csv", np.ones((2, 2)))
    with pytest.raises(DataError, match="must be 2-D"):
        save_features(tmp_path / "f.npy", np.ones(3))
    assert not (tmp_path / "f.npy").exists()


def test_meta_round_trip_and_bad_lines(tmp_path: Path):
    save_meta(tmp_path / "l.meta", np.array([3, 1, -1, 3]))
    assert (tmp_path / "l.meta").read_text() == "3\n1\n-1\n3\n"
    np.testing.assert_array_equal(load_meta(tmp_path / "l.meta", expected=4), [3, 1, -1, 3])
    with pytest.raises(DataError, match="4 labels for 5 feature rows"):
        load_meta(tmp_path / "l.meta", expected=5)
    (tmp_path / "bad.meta").write_text("1\n2\nthree\n")
    with pytest.raises(DataError, match="line 3: 'three' is not an integer label"):
        load_meta(tmp_path / "bad.meta")
    with pytest.raises(DataError, match="label file not found"):
        load_meta(tmp_path / "absent.meta")


def test_check_features_accepts_good_and_refuses_bad(features: np.ndarray):
    check_features(features, "f.npy", dim=16)
    with pytest.raises(DataError, match=r"f\.npy: empty feature set \(0 rows\)"):
        check_features(features[:0], "f.npy")
    with pytest.raises(DataError, match="expected 32 feature columns, found 16"):
        check_features(features, "f.npy", dim=32)
    with pytest.raises(DataError, match="expected a 2-D"):
        check_features(features[0], "f.npy")
    bad = features.copy()
    bad[2, 0], bad[5, 3] = np.nan, np.inf
    with pytest.raises(DataError, match=r"NaN or infinite values in rows \[2, 5\]"):
        check_features(bad, "f.npy")
    zero = features.copy()
    zero[4] = 0.0
    with pytest.raises(DataError, match=r"zero-norm rows \[4\]"):
        check_features(zero, "f.npy")


def test_check_features_scans_past_the_first_block(tmp_path: Path):
    big = np.ones((65536 + 10, 2), np.float32)
    big[65540] = np.nan
    with pytest.raises(DataError, match=r"rows \[65540\]"):
        check_features(big, "big")


def test_l2_normalize_gives_unit_rows_and_keeps_direction():
    raw = np.array([[3.0, 4.0], [0.0, -2.0]])
    out = l2_normalize(raw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)
    np.testing.assert_allclose(raw, [[3.0, 4.0], [0.0, -2.0]])  # input untouched
