"""Aligned evaluation images: the similarity fit, the dlib-5 template against the ArcFace template on real faces
(dlib's 68-point model gives the ArcFace points themselves), the alignment of a folder with faceless images
kept and listed, the aligned-size check, and the refusal of an unaligned set without the ``reference`` extra."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognition_eval.face_align import (
    ARCFACE_112,
    apply_transform,
    arcface_template,
    centre_square,
    dlib_template,
    off_size_images,
    similarity_transform,
)
from semiface.errors import ConfigError, DataError

FACES = ["lfw/Aaron_Sorkin/Aaron_Sorkin_0001.jpg", "orl/s5/4.png"]
FACELESS = "yale_b/yaleB17/yaleB17_P00A+070E+45.png"  # dlib's detector finds no face here (test_dlib_embedder)


def test_the_similarity_fit_recovers_a_rotation_scale_and_shift_and_is_least_squares() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = scale * points @ rotation.T + shift
    matrix = similarity_transform(points, moved)
    np.testing.assert_allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)
    noisy = moved + rng.normal(0, 2.0, size=moved.shape)
    fitted = similarity_transform(points, noisy)
    residual = ((apply_transform(fitted, points) - noisy) ** 2).sum()
    for nudge in (np.array([[1e-3, 0, 0], [0, 0, 0]]), np.array([[0, 0, 0], [0, 0, 0.05]])):
        assert ((apply_transform(fitted + nudge, points) - noisy) ** 2).sum() > residual
    mirrored = points * np.array([-1.0, 1.0])  # a reflection is not a similarity: the fit keeps det > 0
    assert np.linalg.det(similarity_transform(points, mirrored)[:, :2]) > 0


def test_the_dlib_template_sits_on_the_arcface_template() -> None:
    template = dlib_template(112)
    eye_centres = np.array([template[2:4].mean(0), template[0:2].mean(0)])  # image-left eye, image-right eye
    assert np.abs(eye_centres - ARCFACE_112[:2]).max() < 2.0
    assert ARCFACE_112[2, 1] < template[4, 1] < ARCFACE_112[3:, 1].mean()  # the base of the nose: below its tip
    np.testing.assert_allclose(dlib_template(224), 2 * template)
    np.testing.assert_allclose(arcface_template(224), 2 * ARCFACE_112)


@pytest.fixture(scope="module")
def dlib_models():
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from backbone.dlib_embedder import load_dlib_models

    return load_dlib_models()


def test_on_real_faces_the_dlib_alignment_puts_the_arcface_points_where_the_arcface_template_does(
        dlib_models, shared_data_dir) -> None:
    """For each face, the ArcFace points from dlib's 68-point model (eye centres, nose tip, mouth corners): the
    crop aligned from the five landmarks puts them within a few pixels of where the ArcFace alignment of those
    very points does (measured: 2.0 px mean over 50 LFW faces, 5.9 px the worst); a plain centre crop does not."""
    import dlib
    import face_recognition_models

    from backbone.data.images import read_image
    from backbone.dlib_embedder import face_box

    shape68 = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    paths = sorted((shared_data_dir / "lfw").glob("*/*.jpg"))[:240:20]
    aligned, centred = [], []
    for path in paths:
        image = read_image(path)
        box, found = face_box(dlib_models, image)
        assert found, path
        five = dlib_models.landmarks(image, box)
        five = np.array([[five.part(i).x, five.part(i).y] for i in range(5)], dtype=np.float64)
        q = shape68(image, box)
        q = np.array([[q.part(i).x, q.part(i).y] for i in range(68)], dtype=np.float64)
        points = np.vstack([q[36:42].mean(0), q[42:48].mean(0), q[30], q[48], q[54]])
        reference = apply_transform(similarity_transform(points, arcface_template()), points)
        ours = apply_transform(similarity_transform(five, dlib_template()), points)
        aligned.append(np.linalg.norm(ours - reference, axis=1).mean())
        side = min(image.shape[:2])  # centre_square: the centred square scaled to 112
        corner = (np.array(image.shape[1::-1]) - side) / 2
        centred.append(np.linalg.norm((points - corner) * 112 / side - reference, axis=1).mean())
    assert np.mean(aligned) < 3.0 and max(aligned) < 8.0, aligned
    assert np.mean(centred) > 2 * np.mean(aligned), (centred, aligned)


def copy_real_images(shared_data_dir: Path, root: Path) -> list[str]:
    paths = []
    for name in [*FACES, FACELESS]:
        relative = f"{'probes' if name != FACELESS else 'distractors'}/{name}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data_dir / name, root / relative)
        paths.append(relative)
    return paths


def test_a_folder_is_aligned_to_112_px_with_faceless_images_kept_centre_cropped_and_listed(
        dlib_models, shared_data_dir, tmp_path) -> None:
    from recognition_eval.face_align import align_images

    source, out = tmp_path / "photos", tmp_path / "aligned"
    paths = copy_real_images(shared_data_dir, source)
    before = {p: (source / p).read_bytes() for p in paths}
    seen = []
    summary = align_images(source, paths, out, 112, progress=lambda n, total: seen.append((n, total)))
    assert summary.images == 3 and summary.no_face == [paths[-1]] and seen[-1] == (3, 3)
    for path in paths:
        with Image.open(out / path) as image:
            assert image.size == (112, 112) and image.format == Image.open(source / path).format
        assert (source / path).read_bytes() == before[path]  # inputs untouched
    faceless = np.asarray(Image.open(source / paths[-1]).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / paths[-1]).convert("RGB")), centre_square(faceless, 112))
    assert off_size_images(out, paths, 112) == []
    assert {path for path, _ in off_size_images(source, paths, 112)} == set(paths)


def test_the_size_check_reads_a_spread_sample_and_names_unreadable_images(tmp_path) -> None:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(200):
        size = (64, 64) if i != 150 else (64, 80)
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    assert off_size_images(tmp_path, paths, 64, sample=200) == [("150.png", (64, 80))]
    assert off_size_images(tmp_path, paths, 64, sample=10) == []  # 150 is not among the ten spread over the list
    assert len(off_size_images(tmp_path, paths, 112, sample=10)) == 10
    (tmp_path / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"0\.png: unreadable image"):
        off_size_images(tmp_path, paths, 64, sample=3)


def test_an_unaligned_set_is_refused_without_the_extra_saying_how_to_align_it(tmp_path, monkeypatch) -> None:
    import pandas as pd

    import backbone.dlib_embedder
    from semiface.manifest import write_manifest
    from tasks.align_eval import aligned_eval_set
    from tasks.stage_cache import StageResult

    for name, size in (("probes/A/1.png", 150), ("probes/A/2.png", 150), ("distractors/x.png", 150)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size)).save(tmp_path / name)
    manifest = write_manifest(pd.DataFrame({
        "path": ["probes/A/1.png", "probes/A/2.png", "distractors/x.png"], "label": -1,
        "identity": ["A", "A", "unknown"], "split": ["probe", "probe", "distractor"]}), tmp_path / "m.parquet")
    eval_data = StageResult("prepare_eval", "0" * 64, str(tmp_path), {"manifest": str(manifest)},
                            {"image_root": str(tmp_path)})
    assert aligned_eval_set(None, eval_data, 150) is eval_data  # square at image_size: taken as aligned

    def no_extra():
        raise ConfigError("the dlib embedder needs dlib and its weights (No module named 'dlib')")

    monkeypatch.setattr(backbone.dlib_embedder, "load_dlib_models", no_extra)
    with pytest.raises(ConfigError) as error:
        aligned_eval_set(None, eval_data, 112)
    message = str(error.value)
    assert "3 of the images checked" in message and "probes/A/1.png: 150x150" in message
    assert "pip install -e '.[reference]'" in message and "MegaFace test pack" in message
