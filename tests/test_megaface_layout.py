"""The MegaFace Challenge 1 layout: FaceScrub-style probes, a distractor folder or list, devkit feature files."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from recognition_eval.__main__ import main as eval_cli
from recognition_eval.megaface import (
    evaluate_megaface_features,
    link_image_roots,
    list_distractors,
    list_probes,
    megaface_manifest,
    noise_mask,
    read_devkit_feature,
    read_image_list,
    read_noise_list,
)
from recognition_eval.report import evaluate
from semiface.errors import DataError
from semiface.manifest import validate_manifest


def write_devkit_feature(path: Path, vector: np.ndarray) -> None:
    """The devkit's (and InsightFace's gen_megaface) layout: rows, cols, element size, type 5, floats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("4i", len(vector), 1, 4, 5) + np.asarray(vector, np.float32).tobytes())


@pytest.fixture()
def layout(tmp_path):
    """facescrub/<identity>/<image> (3 people x 2 images) and a nested distractor folder (7 images)."""
    probes, distractors = tmp_path / "facescrub", tmp_path / "FlickrFinal2"
    for person in ("Adam_Brody", "Amy_Adams", "Zoe_Saldana"):
        for i in range(2):
            (probes / person).mkdir(parents=True, exist_ok=True)
            (probes / person / f"{person}_{i}.png").write_bytes(b"png")
    (probes / "Amy_Adams" / "notes.txt").write_text("not an image")
    for i in range(7):
        folder = distractors / f"{i % 2}" / f"{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(b"jpg")
    return probes, distractors


def test_folders_become_a_manifest_of_probe_and_distractor_rows_under_link_names(layout):
    probes, distractors = layout
    probe_frame, probe_root = list_probes(probes)
    paths, distractor_root = list_distractors(distractors)
    assert probe_root == probes and distractor_root == distractors
    assert probe_frame["identity"].value_counts().to_dict() == {"Adam_Brody": 2, "Amy_Adams": 2, "Zoe_Saldana": 2}
    assert len(paths) == len(set(paths)) == 7 and all(p.endswith(".jpg") for p in paths)
    frame = validate_manifest(megaface_manifest(probe_frame, paths))
    assert (frame["split"] == "probe").sum() == 6 and (frame["split"] == "distractor").sum() == 7
    assert (frame["label"] == -1).all()
    assert frame["path"].str.startswith(("probes/", "distractors/")).all()
    assert not frame["path"].str.contains(str(probes.parent)).any()  # nothing of where the data is mounted


def test_linked_roots_follow_a_moved_data_set_without_a_new_manifest(layout, tmp_path):
    probes, distractors = layout
    probe_frame, _ = list_probes(probes)
    paths, _ = list_distractors(distractors)
    frame = megaface_manifest(probe_frame, paths)
    links = link_image_roots(tmp_path / "links", {"probes": probes, "distractors": distractors})
    assert all((links / p).is_file() for p in frame["path"])
    moved = Path(shutil.move(str(probes), str(tmp_path / "mnt" / "facescrub")))
    link_image_roots(links, {"probes": moved, "distractors": distractors})  # the next run relinks
    assert all((links / p).is_file() for p in frame["path"])
    with pytest.raises(DataError, match="probes image root not found"):
        link_image_roots(links, {"probes": probes})


def test_devkit_json_and_text_lists(tmp_path):
    devkit = tmp_path / "facescrub_features_list.json"
    devkit.write_text(json.dumps({"path": ["A/a.png", "A/b.png"], "id": ["A", "A"]}))
    frame = read_image_list(devkit, with_identities=True)
    assert frame.to_dict("list") == {"path": ["A/a.png", "A/b.png"], "identity": ["A", "A"]}
    text = tmp_path / "distractors.txt"
    text.write_text("x/1.jpg\n\nx/2.jpg\n")
    assert read_image_list(text, with_identities=False)["path"].tolist() == ["x/1.jpg", "x/2.jpg"]
    probes, root = list_probes(devkit, probe_root=tmp_path)
    assert root == tmp_path and len(probes) == 2


@pytest.mark.parametrize(("content", "message"), [
    ('{"path": ["a.png"]}', '"id" list'),
    ('{"path": ["a.png"], "id": ["A", "B"]}', '"id" list'),
    ("{not json", "not valid JSON"),
    ("a.png\n", "line 1: expected 'path<TAB>identity'"),
    ("\n\n", "empty image list"),
])
def test_bad_probe_lists_are_named_with_their_problem(tmp_path, content, message):
    listing = tmp_path / "probes.json"
    listing.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_image_list(listing, with_identities=True)
    assert str(listing) in str(error.value)


def test_a_list_without_its_root_or_a_folder_without_images_is_refused(tmp_path):
    listing = tmp_path / "d.txt"
    listing.write_text("a.jpg\n")
    with pytest.raises(DataError, match="distractor_root"):
        list_distractors(listing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no distractor images"):
        list_distractors(tmp_path / "empty")
    with pytest.raises(DataError, match="image list not found"):
        list_probes(tmp_path / "missing.json", probe_root=tmp_path)


def features_case(seed: int = 0, dim: int = 16):
    """3 probe identities (2 images each, tight) and 40 random distractors; identity C's second image is
    turned away from its first, so C's two pairs lose to 40 distractors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    probes = np.repeat(centres, 2, axis=0) + 0.05 * rng.normal(size=(6, dim))
    probes[5] = rng.normal(size=dim)
    distractors = rng.normal(size=(40, dim))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(probes), unit(distractors)


def write_lists(tmp_path: Path) -> tuple[Path, Path, list[str], list[str]]:
    probe_paths = [f"{p}/{p}_{i}.jpg" for p in "ABC" for i in range(2)]
    distractor_paths = [f"{i % 4}/{i}.jpg" for i in range(40)]
    probe_list, distractor_list = tmp_path / "facescrub.json", tmp_path / "megaface.json"
    probe_list.write_text(json.dumps({"path": probe_paths, "id": [p.split("/")[0] for p in probe_paths]}))
    distractor_list.write_text(json.dumps({"path": distractor_paths}))
    return probe_list, distractor_list, probe_paths, distractor_paths


def write_feature_files(tmp_path: Path, probes: np.ndarray, distractors: np.ndarray
                        ) -> tuple[Path, Path, list[str], list[str]]:
    """``write_lists`` plus the features both ways: p.npy / d.npy, and devkit files under fs_feats/ and
    mf_feats/ (suffix ``_model.bin``)."""
    probe_list, distractor_list, probe_paths, distractor_paths = write_lists(tmp_path)
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "d.npy", distractors)
    for root, paths, rows in (("fs_feats", probe_paths, probes), ("mf_feats", distractor_paths, distractors)):
        for path, row in zip(paths, rows, strict=True):
            write_devkit_feature(tmp_path / root / f"{path}_model.bin", row)
    return probe_list, distractor_list, probe_paths, distractor_paths


def test_precomputed_npy_and_devkit_feature_files_score_as_the_manifest_route(tmp_path):
    probes, distractors = features_case()
    probe_list, distractor_list, probe_paths, distractor_paths = write_feature_files(tmp_path, probes, distractors)
    options = {"sizes": [1, 10, 40], "device": "cpu"}
    from_npy = evaluate_megaface_features(probe_list, tmp_path / "p.npy", distractor_list, tmp_path / "d.npy",
                                         tmp_path / "npy", **options)
    from_devkit = evaluate_megaface_features(probe_list, tmp_path / "fs_feats", distractor_list, tmp_path / "mf_feats",
                                             tmp_path / "devkit", suffix="_model.bin", **options)
    manifest = megaface_manifest(read_image_list(probe_list, True), distractor_paths)
    direct = evaluate(np.concatenate([probes, distractors]), manifest, tmp_path / "direct", **options)
    assert from_npy["rank1"] == from_devkit["rank1"] == direct["rank1"]
    rank1 = list(from_npy["rank1"].values())
    assert rank1[0] >= rank1[-1] == pytest.approx(4 / 6)  # C's turned image loses both its pairs to distractors
    assert from_npy["n_pairs"] == 6
    assert (tmp_path / "npy" / "results.json").is_file()


def test_cli_evaluates_megaface_features_and_names_bad_inputs(tmp_path, capsys):
    probes, distractors = features_case(1)
    probe_list, distractor_list, _, _ = write_lists(tmp_path)
    np.save(tmp_path / "p.npy", probes)
    np.save(tmp_path / "d.npy", distractors[:, :8].copy())
    args = ["--probe-list", str(probe_list), "--probe-features", str(tmp_path / "p.npy"), "--distractor-list",
            str(distractor_list), "--distractor-features", str(tmp_path / "d.npy"), "--out", str(tmp_path / "o"),
            "--sizes", "10", "--device", "cpu"]
    assert eval_cli(args) == 2
    assert "d.npy" in capsys.readouterr().err  # 8 columns against the probes' 16
    np.save(tmp_path / "d.npy", distractors)
    assert eval_cli(args) == 0
    assert json.loads(capsys.readouterr().out)["largest_size"] == 10
    with pytest.raises(SystemExit):
        eval_cli(args[:4] + ["--out", str(tmp_path / "o")])


def test_noise_lists_name_images_by_path_or_by_file_name_and_a_list_for_another_set_is_refused(tmp_path):
    noise = tmp_path / "megaface_noises.txt"
    noise.write_text("# the cleaned protocol\n./0/4.jpg\n\n1\\5.jpg\nC_1.jpg\nnot/in/this/set.jpg\n")
    entries = read_noise_list(noise)
    assert entries == {"0/4.jpg", "1/5.jpg", "C_1.jpg", "not/in/this/set.jpg"}
    paths = ["0/0.jpg", "0/4.jpg", "1/5.jpg", "2/5.jpg", "C/C_1.jpg", "D/C_1.jpg.png"]
    assert noise_mask(paths, noise).tolist() == [False, True, True, False, True, False]
    with pytest.raises(DataError, match="megaface_noises.txt.*none of its 4 entries"):
        noise_mask(["x/y.jpg"], noise)
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(DataError, match="empty.txt.*empty noise list"):
        read_noise_list(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="missing.txt.*not found"):
        read_noise_list(tmp_path / "missing.txt")


def test_noisy_images_are_left_out_of_the_precomputed_route_as_if_never_listed(tmp_path, capsys):
    """Noise lists drop the same images from the .npy route, the devkit-file route (whose noisy files are
    not read) and the CLI; the scores equal those of lists without these images."""
    probes, distractors = features_case(2)
    probe_list, distractor_list, probe_paths, distractor_paths = write_feature_files(tmp_path, probes, distractors)
    dropped_probe, dropped_distractors = 5, [0, 7, 13, 30]  # C's turned-away image, and four distractors
    (tmp_path / "fs_noise.txt").write_text(probe_paths[dropped_probe].split("/")[1] + "\n")  # by file name
    (tmp_path / "mf_noise.txt").write_text("".join(f"{distractor_paths[i]}\n" for i in dropped_distractors))
    (tmp_path / "fs_feats" / f"{probe_paths[dropped_probe]}_model.bin").write_bytes(b"broken")  # never read
    options = {"sizes": [10, 36], "device": "cpu"}
    noise = {"probe_noise": tmp_path / "fs_noise.txt", "distractor_noise": tmp_path / "mf_noise.txt"}
    from_npy = evaluate_megaface_features(probe_list, tmp_path / "p.npy", distractor_list, tmp_path / "d.npy",
                                         tmp_path / "npy", **noise, **options)
    from_devkit = evaluate_megaface_features(probe_list, tmp_path / "fs_feats", distractor_list, tmp_path / "mf_feats",
                                             tmp_path / "devkit", suffix="_model.bin", **noise, **options)
    keep_d = np.setdiff1d(np.arange(40), dropped_distractors)
    probe_rows = read_image_list(probe_list, True).drop(index=dropped_probe).reset_index(drop=True)
    direct = evaluate(np.concatenate([np.delete(probes, dropped_probe, axis=0), distractors[keep_d]]),
                      megaface_manifest(probe_rows, [distractor_paths[i] for i in keep_d]), tmp_path / "direct", **options)
    assert from_npy["noise_removed"] == from_devkit["noise_removed"] == {"probe": 1, "distractor": 4}
    recorded = json.loads((tmp_path / "npy" / "results.json").read_text())["inputs"]
    assert recorded["noise_removed"] == {"probe": 1, "distractor": 4} and recorded["n_distractor_rows"] == 36
    assert from_npy["rank1"] == from_devkit["rank1"] == direct["rank1"]
    assert from_npy["n_pairs"] == 4  # A and B: 2 pairs each; C is left with one image
    assert list(from_npy["rank1"].values())[-1] == 1.0  # the image that lost to distractors is gone

    args = ["--probe-list", str(probe_list), "--probe-features", str(tmp_path / "p.npy"), "--distractor-list",
            str(distractor_list), "--distractor-features", str(tmp_path / "d.npy"), "--out", str(tmp_path / "cli"),
            "--sizes", "10", "36", "--device", "cpu", "--distractor-noise", str(tmp_path / "mf_noise.txt")]
    assert eval_cli(args) == 0
    assert json.loads(capsys.readouterr().out)["noise_removed"] == {"probe": 0, "distractor": 4}
    (tmp_path / "other_noise.txt").write_text("elsewhere/1.jpg\n")
    assert eval_cli(args[:-1] + [str(tmp_path / "other_noise.txt")]) == 2
    assert "other_noise.txt" in capsys.readouterr().err


def test_devkit_feature_file_problems_are_named(tmp_path):
    good = tmp_path / "a.jpg_m.bin"
    write_devkit_feature(good, np.arange(4.0))
    np.testing.assert_array_equal(read_devkit_feature(good), np.arange(4.0, dtype=np.float32))
    bad = tmp_path / "b.jpg_m.bin"
    bad.write_bytes(struct.pack("4i", 8, 1, 4, 5) + np.zeros(4, np.float32).tobytes())
    with pytest.raises(DataError, match="not a float32 devkit feature") as error:
        read_devkit_feature(bad)
    assert str(bad) in str(error.value)
    with pytest.raises(DataError, match="feature file not found"):
        read_devkit_feature(tmp_path / "missing.bin")
