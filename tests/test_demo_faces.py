"""The demo face generator: contract, determinism, safety, and that it is learnable but not trivial."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from backbone.data import demo_faces
from backbone.data.demo_faces import DemoConfig, generate_demo_dataset, render_identity_image
from semiface.errors import ConfigError, DataError
from semiface.manifest import read_manifest

SMALL = DemoConfig(
    n_labelled_ids=4, n_unlabelled_ids=3, n_probe_ids=2, n_distractor_ids=5, images_per_id=3, image_size=32
)


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_manifest_follows_the_contract(tmp_path):
    manifest_path = generate_demo_dataset(tmp_path / "demo", SMALL)
    frame = read_manifest(manifest_path)
    assert manifest_path == tmp_path / "demo" / "manifest.parquet"
    per_split = frame.groupby("split")["identity"].nunique().to_dict()
    assert per_split == {"labelled": 4, "unlabelled": 3, "probe": 2, "distractor": 5}
    assert frame.groupby("split").size().to_dict() == {
        "labelled": 12,
        "unlabelled": 9,
        "probe": 6,
        "distractor": 5,
    }
    # Disjoint identity pools.
    pools = frame.groupby("split")["identity"].apply(set)
    assert sum(len(p) for p in pools) == len(set().union(*pools))
    labelled = frame[frame.split == "labelled"]
    assert frame.label.dtype == np.int64
    assert sorted(labelled.label.unique()) == [0, 1, 2, 3]
    assert labelled.groupby("identity").label.nunique().eq(1).all()
    assert (frame[frame.split != "labelled"].label == -1).all()
    for rel in frame.path:
        assert not Path(rel).is_absolute()
        image = _read_rgb(tmp_path / "demo" / rel)
        assert image.shape == (32, 32, 3)
    assert json.loads((tmp_path / "demo" / "demo_config.json").read_text())["config"]["seed"] == 0


def test_same_seed_same_bytes_and_order_independent(tmp_path):
    first = generate_demo_dataset(tmp_path / "a", SMALL).parent
    second = generate_demo_dataset(tmp_path / "b", SMALL).parent
    files = sorted(p.relative_to(first) for p in (first / "images").rglob("*.png"))
    assert len(files) == 32
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(first / "manifest.parquet"), pd.read_parquet(second / "manifest.parquet")
    )
    # One image rendered alone equals the one written in the dataset.
    row = pd.read_parquet(first / "manifest.parquet").iloc[7]
    identity_index, image_index = int(row.identity[2:]), int(Path(row.path).stem)
    np.testing.assert_array_equal(
        render_identity_image(SMALL, identity_index, image_index), _read_rgb(first / row.path)
    )
    # Another seed gives other images.
    other = generate_demo_dataset(tmp_path / "c", DemoConfig(**{**SMALL.__dict__, "seed": 1})).parent
    assert (other / files[0]).read_bytes() != (first / files[0]).read_bytes()


def test_reuses_identical_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    manifest_path = generate_demo_dataset(out, SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate_demo_dataset(out, SMALL) == manifest_path
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(DataError, match="different demo dataset"):
        generate_demo_dataset(out, DemoConfig(**{**SMALL.__dict__, "difficulty": 0.9}))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_demo_dataset(foreign, SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_demo_dataset(empty, SMALL).is_file()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = demo_faces.render_face

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_faces, "render_face", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo_dataset(tmp_path / "demo", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_long_tail_counts():
    config = DemoConfig(
        n_labelled_ids=300,
        n_unlabelled_ids=0,
        n_probe_ids=0,
        n_distractor_ids=10,
        images_per_id=10,
        long_tail=True,
    )
    counts = demo_faces.images_per_identity(config)
    labelled = counts["labelled"]
    assert labelled.min() == 2 and labelled.max() <= 50
    assert 7 <= labelled.mean() <= 13
    assert np.percentile(labelled, 90) >= 2 * np.median(labelled)  # a real tail, not a constant
    assert (counts["distractor"] == 1).all()


@pytest.mark.parametrize(
    "change",
    [
        {"images_per_id": 1},
        {"difficulty": 1.5},
        {"n_probe_ids": -1},
        {"image_size": 8},
        {"n_labelled_ids": 0, "n_unlabelled_ids": 0, "n_probe_ids": 0, "n_distractor_ids": 0},
    ],
)
def test_bad_config_is_refused(change):
    with pytest.raises(ConfigError):
        DemoConfig(**{**SMALL.__dict__, **change})


def test_cli_prints_what_it_made(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path / "d"),
        "--n-labelled-ids",
        "3",
        "--n-unlabelled-ids",
        "2",
        "--n-probe-ids",
        "2",
        "--n-distractor-ids",
        "4",
        "--images-per-id",
        "2",
        "--image-size",
        "32",
    ]
    assert demo_faces.main(args) == 0
    out = capsys.readouterr().out
    assert "generated" in out and "labelled" in out and "distractor" in out and "18 images" in out
    assert demo_faces.main(args) == 0
    assert "reused" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        demo_faces.main([*args, "--difficulty", "0.9"])
    assert exit_info.value.code == 2


def _identification_stats(
    config: DemoConfig, n_train_ids: int, n_test_ids: int, images: int
) -> tuple[float, float]:
    """Train a fixed cheap extractor (pixels -> PCA -> LDA) on some identities, test on unseen ones.

    Returns (rank-1 leave-one-out nearest-neighbour accuracy, fraction of hard samples: images whose
    cosine similarity to another identity's mean beats the one to their own identity's mean without them).
    """

    def pixels(ids: range) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for i in ids:
            for k in range(images):
                image = render_identity_image(config, i, k).astype(np.float32)
                crop = image[3:-3, 3:-3]  # drop the outer background ring
                rows.append(cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA).ravel())
                labels.append(i)
        return np.stack(rows), np.asarray(labels)

    train_x, train_y = pixels(range(n_train_ids))
    test_x, test_y = pixels(range(1000, 1000 + n_test_ids))
    pca = PCA(64, random_state=0).fit(train_x)
    lda = LinearDiscriminantAnalysis(n_components=32).fit(pca.transform(train_x), train_y)
    feats = lda.transform(pca.transform(test_x))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    accuracy = float((test_y[sims.argmax(1)] == test_y).mean())
    classes, index = np.unique(test_y, return_inverse=True)
    sums = np.zeros((len(classes), feats.shape[1]))
    np.add.at(sums, index, feats)
    own = sums[index] - feats
    own_sim = np.einsum("nd,nd->n", feats, own / np.linalg.norm(own, axis=1, keepdims=True))
    centre_sims = feats @ (sums / np.linalg.norm(sums, axis=1, keepdims=True)).T
    centre_sims[np.arange(len(feats)), index] = -np.inf
    hard = float((centre_sims.max(1) > own_sim).mean())
    return accuracy, hard


def test_learnable_but_not_trivial():
    """Default difficulty: unseen identities are recognised far above chance, and hard samples exist."""
    n_test = 25
    accuracy, hard = _identification_stats(DemoConfig(), n_train_ids=50, n_test_ids=n_test, images=8)
    chance = 1 / n_test
    print(f"rank-1 on unseen identities {accuracy:.3f} (chance {chance:.3f}), hard samples {hard:.3f}")
    assert accuracy > 10 * chance
    assert accuracy < 0.95
    assert 0.05 < hard < 0.6
    easy_accuracy, easy_hard = _identification_stats(DemoConfig(difficulty=0.1), 50, n_test, 8)
    assert easy_accuracy > accuracy and easy_hard < hard  # the difficulty knob works
