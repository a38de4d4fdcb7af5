"""dlib's pretrained embedder (optional extra ``reference``; skipped without it): it reproduces the
shipped real-face descriptors, counts images without a detected face, and names bad inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from backbone.data.folder import scan_image_folder
from backbone.data.images import read_image
from semiface.errors import ConfigError, DataError
from semiface.manifest import write_manifest

dlib_embedder = pytest.importorskip("backbone.dlib_embedder")
pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

ROWS = {"lfw/Aaron_Sorkin/Aaron_Sorkin_0001.jpg": True, "orl/s5/4.png": True,
        "yale_b/yaleB17/yaleB17_P00A+070E+45.png": False}


@pytest.fixture(scope="module")
def models():
    return dlib_embedder.load_dlib_models()


@pytest.fixture(scope="module")
def shipped(shared_data_dir):
    features = shared_data_dir / "features"
    if not (features / "dlib_128.npy").is_file():
        pytest.skip("dlib features not shipped")
    paths = (features / "dlib_128_paths.txt").read_text().split()
    return np.load(features / "dlib_128.npy"), {p: i for i, p in enumerate(paths)}


def test_descriptors_match_the_shipped_real_face_features(models, shipped, shared_data_dir) -> None:
    features, row_of = shipped
    for path, has_face in ROWS.items():
        vector, found = dlib_embedder.embed_image(models, read_image(shared_data_dir / path))
        assert found == has_face, path
        assert vector.shape == (128,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        assert float(vector @ features[row_of[path]]) > 0.99, path


def test_a_manifest_is_embedded_in_order_with_faceless_images_counted(tmp_path, shared_data_dir, models) -> None:
    root = tmp_path / "faces"
    for path in ROWS:
        target = root / path.split("/")[1] / path.split("/")[2]
        target.parent.mkdir(parents=True)
        shutil.copy(shared_data_dir / path, target)
    manifest = write_manifest(scan_image_folder(root), tmp_path / "manifest.parquet")
    summary = dlib_embedder.embed_manifest(manifest, root, tmp_path / "f.npy", progress=False)
    assert summary == {"rows": 3, "dim": 128, "no_face": 1}
    features = np.load(tmp_path / "f.npy")
    frame = scan_image_folder(root)
    expected = dlib_embedder.embed_image(models, read_image(root / frame["path"].iloc[0]))[0]
    np.testing.assert_allclose(features[0], expected, atol=1e-6)
    # bad input: a missing image names the file, and no output is left behind
    (root / frame["path"].iloc[1]).unlink()
    with pytest.raises(DataError, match=frame["path"].iloc[1].split("/")[-1]):
        dlib_embedder.embed_manifest(manifest, root, tmp_path / "g.npy", progress=False)
    assert not (tmp_path / "g.npy").exists()
    with pytest.raises(ConfigError, match=".npy"):
        dlib_embedder.embed_manifest(manifest, root, tmp_path / "g.bin", progress=False)


def test_without_the_extra_the_error_says_how_to_install(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ConfigError, match="reference"):
        dlib_embedder.load_dlib_models()
