"""Deterministic synthetic face-like identities: the project's embedded demo data.

Each identity has fixed appearance parameters (face outline, eye/brow/nose/mouth geometry, skin and
hair colours, skin texture, moles, beard). Each image of it adds nuisances that mimic capture: pose
(rotation, scale, shift and a yaw-like shift of the inner features), expression, illumination
gradient and colour cast, partial occlusion, low resolution, blur and sensor noise, all growing with
``difficulty`` in [0, 1]. Every image is drawn from its own seed (seed, identity, image number), so a
config gives the same bytes whatever the order of generation.

Written layout: ``out_dir/images/<identity>/<k>.png``, ``out_dir/manifest.parquet`` (the manifest
contract of :mod:`semiface.manifest`, paths relative to ``out_dir``) and ``out_dir/demo_config.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from semiface.errors import ConfigError, DataError
from semiface.manifest import SPLITS, write_manifest

# Bump when a change to the drawing would change the bytes of an existing config.
GENERATOR_VERSION = 1
SUPERSAMPLE = 2  # draw at 2x and shrink with area averaging: cheap anti-aliasing
CONFIG_FILE = "demo_config.json"
MANIFEST_FILE = "manifest.parquet"

_SKIN_DARK = np.array([70.0, 45.0, 30.0])
_SKIN_LIGHT = np.array([240.0, 205.0, 180.0])
_HAIR_PALETTE = np.array(
    [
        [25, 20, 20],
        [60, 40, 25],
        [110, 75, 45],
        [200, 170, 110],
        [150, 60, 30],
        [160, 160, 160],
        [225, 222, 215],
    ],
    dtype=np.float64,
)
_IRIS_PALETTE = np.array(
    [[90, 55, 30], [40, 30, 25], [70, 110, 160], [80, 120, 70], [120, 125, 130]], dtype=np.float64
)
_SHIFT = 4  # cv2 fractional-coordinate bits
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class DemoConfig:
    """What to generate. Identity pools of the four splits are disjoint.

    ``images_per_id`` is the count per identity of the labelled, unlabelled and probe splits (the mean
    count when ``long_tail``: then counts follow a log-normal law clipped to [2, 5 x images_per_id]).
    ``difficulty`` in [0, 1] scales every nuisance (0: frontal, clean; 1: strong pose, light, occlusion).
    """

    n_labelled_ids: int = 40
    n_unlabelled_ids: int = 120
    n_probe_ids: int = 20
    n_distractor_ids: int = 200
    images_per_id: int = 10
    distractor_images_per_id: int = 1
    long_tail: bool = False
    image_size: int = 64
    difficulty: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_labelled_ids", "n_unlabelled_ids", "n_probe_ids", "n_distractor_ids"):
            if getattr(self, name) < 0:
                raise ConfigError(f"DemoConfig.{name}: must be >= 0, got {getattr(self, name)}")
        if self.n_labelled_ids + self.n_unlabelled_ids + self.n_probe_ids + self.n_distractor_ids == 0:
            raise ConfigError("DemoConfig: every identity count is 0; nothing to generate")
        if self.images_per_id < 2:
            raise ConfigError(
                f"DemoConfig.images_per_id: must be >= 2 (probes need pairs), got {self.images_per_id}"
            )
        if self.distractor_images_per_id < 1:
            raise ConfigError(
                f"DemoConfig.distractor_images_per_id: must be >= 1, got {self.distractor_images_per_id}"
            )
        if not 16 <= self.image_size <= 512:
            raise ConfigError(f"DemoConfig.image_size: must be in [16, 512], got {self.image_size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ConfigError(f"DemoConfig.difficulty: must be in [0, 1], got {self.difficulty}")

    def identity_counts(self) -> dict[str, int]:
        """Number of identities per split, in manifest order."""
        return {
            "labelled": self.n_labelled_ids,
            "unlabelled": self.n_unlabelled_ids,
            "probe": self.n_probe_ids,
            "distractor": self.n_distractor_ids,
        }


@dataclass(frozen=True, eq=False)
class FaceParams:
    """Fixed appearance of one identity; lengths are fractions of the image side."""

    cy: float
    ax: float
    ay: float
    roundness: float
    jaw: float
    skin: np.ndarray
    hair: np.ndarray
    hair_style: int  # 0 short, 1 long, 2 balding, 3 curly
    hairline: float
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: np.ndarray
    brow_gap: float
    brow_tilt: float
    brow_thick: float
    nose_tip_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_curve: float
    lip_thick: float
    lips: np.ndarray
    texture: np.ndarray  # 5x5 low-frequency skin pattern
    texture_amp: float
    moles: np.ndarray  # [m, 3]: x offset, y, radius
    beard: bool


@dataclass(frozen=True, eq=False)
class ImageView:
    """Per-image nuisances."""

    background: np.ndarray
    yaw: float
    mouth_delta: float
    eye_open: float
    occluder: str | None
    detail_seed: int  # seeds the occluder shape/colour and the sensor noise
    rotation_deg: float
    scale: float
    shift: tuple[float, float]
    light_angle: float
    light_strength: float
    gain: float
    colour_cast: np.ndarray
    lowres_factor: float | None
    blur_sigma: float | None
    noise_sigma: float


def sample_face(rng: np.random.Generator) -> FaceParams:
    """Draw the fixed appearance of one identity."""
    cy = rng.uniform(0.50, 0.56)
    ax, ay = rng.uniform(0.25, 0.34), rng.uniform(0.33, 0.42)
    skin = _SKIN_DARK + rng.uniform() * (_SKIN_LIGHT - _SKIN_DARK) + rng.normal(0, 8, 3)
    hair = _HAIR_PALETTE[rng.integers(len(_HAIR_PALETTE))] + rng.normal(0, 12, 3)
    eye_y = cy - ay * rng.uniform(0.02, 0.22)
    eye_w = ax * rng.uniform(0.16, 0.24)
    nose_tip_y = eye_y + ay * rng.uniform(0.30, 0.50)
    n_moles = min(rng.poisson(0.8), 4)
    return FaceParams(
        cy=cy,
        ax=ax,
        ay=ay,
        roundness=rng.uniform(0.75, 1.05),
        jaw=rng.uniform(0.55, 0.95),
        skin=np.clip(skin, 0, 255),
        hair=np.clip(hair, 0, 255),
        hair_style=int(rng.integers(4)),
        hairline=cy - ay * rng.uniform(0.35, 0.75),
        eye_y=eye_y,
        eye_dx=ax * rng.uniform(0.32, 0.48),
        eye_w=eye_w,
        eye_h=eye_w * rng.uniform(0.40, 0.65),
        iris=_IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))] + rng.normal(0, 10, 3),
        brow_gap=eye_w * rng.uniform(0.6, 1.2),
        brow_tilt=rng.uniform(-0.015, 0.015),
        brow_thick=rng.uniform(0.008, 0.02),
        nose_tip_y=nose_tip_y,
        nose_w=ax * rng.uniform(0.10, 0.20),
        mouth_y=min(nose_tip_y + ay * rng.uniform(0.15, 0.30), cy + ay * 0.72),
        mouth_w=ax * rng.uniform(0.25, 0.45),
        mouth_curve=rng.uniform(-0.02, 0.03),
        lip_thick=rng.uniform(0.008, 0.02),
        lips=np.clip(skin * rng.uniform(0.55, 0.8) + np.array([35.0, 0.0, 0.0]), 0, 255),
        texture=rng.normal(0, 1, (5, 5)),
        texture_amp=rng.uniform(0.03, 0.15),
        moles=np.column_stack(
            [
                rng.uniform(-0.6, 0.6, n_moles) * ax,
                cy + rng.uniform(-0.3, 0.6, n_moles) * ay,
                rng.uniform(0.006, 0.014, n_moles),
            ]
        ),
        beard=bool(rng.uniform() < 0.2),
    )


def sample_view(rng: np.random.Generator, difficulty: float) -> ImageView:
    """Draw the nuisances of one image; their strength and frequency grow with ``difficulty``."""
    d = difficulty
    occluder = None
    if rng.uniform() < 0.5 * d:
        occluder = ("sunglasses", "mask", "block")[rng.integers(3)]
    rotation_limit = 5 + 30 * d
    return ImageView(
        background=rng.uniform(30, 225, 3),
        yaw=float(rng.normal(0, 0.005 + 0.03 * d)),
        mouth_delta=float(rng.normal(0, 0.01 + 0.02 * d)),
        eye_open=0.15 if rng.uniform() < 0.15 * d else float(rng.uniform(1 - 0.6 * d, 1.0)),
        occluder=occluder,
        detail_seed=int(rng.integers(2**31)),
        rotation_deg=float(np.clip(rng.normal(0, 3 + 12 * d), -rotation_limit, rotation_limit)),
        scale=float(math.exp(rng.normal(0, 0.03 + 0.08 * d))),
        shift=(float(rng.normal(0, 0.01 + 0.05 * d)), float(rng.normal(0, 0.01 + 0.05 * d))),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0, 0.8 * d)),
        gain=float(math.exp(rng.normal(0, 0.05 + 0.25 * d))),
        colour_cast=rng.normal(0, 0.02 + 0.06 * d, 3),
        lowres_factor=float(rng.uniform(1.5, 1.5 + 3 * d)) if rng.uniform() < 0.5 * d else None,
        blur_sigma=float(rng.uniform(0.3, 0.5 + 1.5 * d)) if rng.uniform() < 0.6 * d else None,
        noise_sigma=float(rng.uniform(1, 2 + 10 * d)),
    )


def render_face(face: FaceParams, view: ImageView, size: int, layers: FaceLayers | None = None) -> np.ndarray:
    """Draw one RGB uint8 [size, size, 3] image of ``face`` seen under ``view``.

    ``layers`` (from :func:`face_layers`) may be passed to reuse the identity's pre-drawn parts.
    """
    layers = layers or face_layers(face, size)
    side = size * SUPERSAMPLE
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = _colour(view.background)
    _draw_head(canvas, face, view, layers)
    _draw_occluder(canvas, face, view)
    canvas = _warp(canvas, view)
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return _photometric(image, view)


@dataclass(frozen=True, eq=False)
class FaceLayers:
    """Parts of one identity drawn once and reused by all its images (rendering speed)."""

    skin: np.ndarray  # textured skin, [side, side, 3]
    beard: np.ndarray | None  # beard blended over the skin, [side, side, 3]
    hair: np.ndarray  # hair colour, [side, side, 3]
    above_hairline: np.ndarray  # uint8 [side, side]: 1 above the (possibly curly) hairline
    outline: np.ndarray  # head outline x (relative to the centre) and y, [2, n]
    cap: np.ndarray  # hair cap outline, same layout
    colours: dict[str, tuple[int, int, int]]


def face_layers(face: FaceParams, size: int) -> FaceLayers:
    """Pre-draw the view-independent parts of ``face`` at ``size`` x SUPERSAMPLE."""
    side = size * SUPERSAMPLE
    texture = cv2.resize(face.texture.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    skin = np.clip(face.skin[None, None, :] * (1 + face.texture_amp * texture[:, :, None]), 0, 255).astype(
        np.uint8
    )
    hair = np.empty_like(skin)
    hair[:] = _colour(face.hair)
    beard = None
    if face.beard:
        beard = np.clip(0.25 * skin + 0.75 * 0.9 * face.hair, 0, 255).astype(np.uint8)
    rows = (np.arange(side)[:, None] + 0.5) / side
    cols = (np.arange(side)[None, :] + 0.5) / side
    hairline = face.hairline + (0.015 * np.sin(cols * 60) if face.hair_style == 3 else 0.0)
    colours = {
        "hair": _colour(face.hair),
        "brow": _colour(face.hair * 0.8),
        "skin": _colour(face.skin),
        "neck": _colour(face.skin * 0.8),
        "nose": _colour(face.skin * 0.85),
        "nostril": _colour(face.skin * 0.5),
        "eyelid": _colour(face.skin * 0.45),
        "mole": _colour(face.skin * 0.35),
        "iris": _colour(face.iris),
        "lips": _colour(face.lips),
    }
    return FaceLayers(
        skin=skin,
        beard=beard,
        hair=hair,
        above_hairline=(rows < hairline).astype(np.uint8),
        outline=_outline(face, 1.0),
        cap=_outline(face, 1.08) - np.array([[0.0], [0.01]]),
        colours=colours,
    )


def _pts(xs: np.ndarray, ys: np.ndarray, side: int) -> np.ndarray:
    pts = np.empty((len(xs), 2), np.float64)
    pts[:, 0], pts[:, 1] = xs, ys
    return np.round(pts * (side * _ONE)).astype(np.int32)


def _px(value: float, side: int) -> int:
    return int(round(value * side * _ONE))


def _colour(rgb: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(v))) for v in rgb)
    return (r, g, b)


def _outline(face: FaceParams, scale: float, n: int = 72) -> np.ndarray:
    """Superellipse head outline whose lower half narrows towards the jaw: x relative to the centre, y."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** face.roundness
    y = np.sign(s) * np.abs(s) ** face.roundness
    width = 1 - (1 - face.jaw) * np.clip(s, 0, 1) ** 2
    return np.stack([face.ax * scale * x * width, face.cy + face.ay * scale * y])


def _draw_head(canvas: np.ndarray, face: FaceParams, view: ImageView, layers: FaceLayers) -> None:
    side = canvas.shape[0]
    colours = layers.colours
    cx_out = 0.5 + 0.25 * view.yaw  # the outline moves less than the inner features: a cheap yaw
    cx_in = 0.5 + view.yaw
    if face.hair_style == 1:  # long hair behind the head
        cv2.ellipse(
            canvas,
            (_px(cx_out, side), _px(face.cy + 0.05, side)),
            (_px(face.ax * 1.25, side), _px(face.ay * 1.15, side)),
            0,
            0,
            360,
            colours["hair"],
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    neck_top_left = (_px(cx_out - face.ax * 0.45, side), _px(face.cy + face.ay * 0.6, side))
    neck_bottom_right = (_px(cx_out + face.ax * 0.45, side), _px(1.1, side))
    cv2.rectangle(canvas, neck_top_left, neck_bottom_right, colours["neck"], -1, cv2.LINE_AA, _SHIFT)
    outline = _pts(layers.outline[0] + cx_out, layers.outline[1], side)
    cv2.fillPoly(canvas, [outline], colours["skin"], cv2.LINE_AA, _SHIFT)  # anti-aliased edge
    face_mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(face_mask, [outline], 1, cv2.LINE_8, _SHIFT)
    # Masked fills go through cv2.copyTo: numpy boolean assignment is ~20x slower here.
    cv2.copyTo(layers.skin, face_mask, canvas)
    if layers.beard is not None:
        face_mask[: int((face.nose_tip_y + 0.02) * side)] = 0
        cv2.copyTo(layers.beard, face_mask, canvas)
    cap = np.zeros((side, side), np.uint8)
    cv2.fillPoly(cap, [_pts(layers.cap[0] + cx_out, layers.cap[1], side)], 1, cv2.LINE_8, _SHIFT)
    cap *= layers.above_hairline
    if face.hair_style == 2:  # balding: hair on the sides only
        cap[:, int((cx_out - face.ax * 0.55) * side) : int((cx_out + face.ax * 0.55) * side)] = 0
    cv2.copyTo(layers.hair, cap, canvas)

    eye_open = view.eye_open
    for sign in (-1.0, 1.0):
        ex, ey = cx_in + sign * face.eye_dx, face.eye_y
        inner, outer = ex - sign * face.eye_w * 1.0, ex + sign * face.eye_w * 1.2
        brow = _pts(
            np.array([inner, outer]),
            np.array([ey - face.brow_gap + face.brow_tilt, ey - face.brow_gap - face.brow_tilt]),
            side,
        )
        cv2.line(
            canvas,
            tuple(brow[0]),
            tuple(brow[1]),
            colours["brow"],
            max(1, round(face.brow_thick * side)),
            cv2.LINE_AA,
            _SHIFT,
        )
        centre = (_px(ex, side), _px(ey, side))
        axes = (_px(face.eye_w, side), max(1, _px(face.eye_h * eye_open, side)))
        cv2.ellipse(canvas, centre, axes, 0, 0, 360, (235, 235, 230), -1, cv2.LINE_AA, _SHIFT)
        iris_r = max(1, _px(min(face.eye_h * eye_open, face.eye_w * 0.55), side))
        cv2.circle(
            canvas,
            (_px(ex + 0.3 * view.yaw, side), centre[1]),
            iris_r,
            colours["iris"],
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.circle(
            canvas,
            (_px(ex + 0.3 * view.yaw, side), centre[1]),
            max(1, iris_r // 2),
            (15, 15, 15),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.ellipse(canvas, centre, axes, 0, 0, 360, colours["eyelid"], 1, cv2.LINE_AA, _SHIFT)

    bridge_top = face.eye_y + face.eye_h
    nose = _pts(
        np.array([cx_in, cx_in - face.nose_w, cx_in + face.nose_w]),
        np.array([bridge_top, face.nose_tip_y, face.nose_tip_y]),
        side,
    )
    cv2.fillPoly(canvas, [nose], colours["nose"], cv2.LINE_AA, _SHIFT)
    for sign in (-1.0, 1.0):
        nostril = (_px(cx_in + sign * face.nose_w * 0.5, side), _px(face.nose_tip_y, side))
        cv2.ellipse(
            canvas,
            nostril,
            (_px(face.nose_w * 0.35, side), _px(face.nose_w * 0.2, side)),
            0,
            0,
            360,
            colours["nostril"],
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )

    mx = np.linspace(-1, 1, 15)
    curve = face.mouth_curve + view.mouth_delta
    mouth = _pts(cx_in + 0.8 * view.yaw + mx * face.mouth_w, face.mouth_y - curve * mx**2, side)
    cv2.polylines(
        canvas, [mouth], False, colours["lips"], max(1, round(face.lip_thick * side)), cv2.LINE_AA, _SHIFT
    )

    for dx, y, r in face.moles:
        cv2.circle(
            canvas,
            (_px(cx_in + dx, side), _px(y, side)),
            max(1, _px(r, side)),
            colours["mole"],
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )


def _draw_occluder(canvas: np.ndarray, face: FaceParams, view: ImageView) -> None:
    if view.occluder is None:
        return
    side = canvas.shape[0]
    rng = np.random.default_rng(view.detail_seed)
    cx = 0.5 + view.yaw
    if view.occluder == "sunglasses":
        half_w = face.eye_dx + face.eye_w * 1.6
        corners = _pts(
            np.array([cx - half_w, cx + half_w]),
            np.array([face.eye_y - face.eye_h * 2, face.eye_y + face.eye_h * 2]),
            side,
        )
        cv2.rectangle(
            canvas,
            tuple(corners[0]),
            tuple(corners[1]),
            _colour(rng.uniform(0, 60, 3)),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    elif view.occluder == "mask":
        top = face.nose_tip_y - face.ay * 0.12
        xs = cx + np.array([-1.0, 1.0, 0.8, 0.0, -0.8]) * face.ax * 0.95
        ys = np.array([top, top, face.cy + face.ay * 0.8, face.cy + face.ay * 1.0, face.cy + face.ay * 0.8])
        cv2.fillPoly(canvas, [_pts(xs, ys, side)], _colour(rng.uniform(150, 255, 3)), cv2.LINE_AA, _SHIFT)
    else:
        w, h = rng.uniform(0.2, 0.45, 2)
        x0 = rng.uniform(0.5 - face.ax - w / 2, 0.5 + face.ax - w / 2)
        y0 = rng.uniform(face.cy - face.ay - h / 2, face.cy + face.ay - h / 2)
        corners = _pts(np.array([x0, x0 + w]), np.array([y0, y0 + h]), side)
        cv2.rectangle(
            canvas,
            tuple(corners[0]),
            tuple(corners[1]),
            _colour(rng.uniform(0, 255, 3)),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )


def _warp(canvas: np.ndarray, view: ImageView) -> np.ndarray:
    side = canvas.shape[0]
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), view.rotation_deg, view.scale)
    matrix[:, 2] += np.array(view.shift) * side
    return cv2.warpAffine(
        canvas, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _photometric(image: np.ndarray, view: ImageView) -> np.ndarray:
    size = image.shape[0]
    out = image.astype(np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = coords[None, :] * math.cos(view.light_angle) + coords[:, None] * math.sin(view.light_angle)
    light = view.gain * (1 + 2 * view.light_strength * ramp)
    out *= light[:, :, None] * (1 + view.colour_cast[None, None, :]).astype(np.float32)
    out = np.clip(out, 0, 255)
    if view.lowres_factor is not None:
        small = max(8, round(size / view.lowres_factor))
        out = cv2.resize(
            cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA),
            (size, size),
            interpolation=cv2.INTER_LINEAR,
        )
    if view.blur_sigma is not None:
        out = cv2.GaussianBlur(out, (0, 0), view.blur_sigma)
    noise = np.random.default_rng(view.detail_seed + 1).standard_normal(out.shape, dtype=np.float32)
    return np.clip(np.round(out + view.noise_sigma * noise), 0, 255).astype(np.uint8)


def images_per_identity(config: DemoConfig) -> dict[str, np.ndarray]:
    """Images per identity for each split (log-normal long tail when ``config.long_tail``)."""
    rng = np.random.default_rng([config.seed, 2])
    counts = {}
    for split, n_ids in config.identity_counts().items():
        if split == "distractor":
            counts[split] = np.full(n_ids, config.distractor_images_per_id, dtype=np.int64)
        elif config.long_tail:
            sigma = 1.0
            draws = config.images_per_id * rng.lognormal(-(sigma**2) / 2, sigma, n_ids)
            counts[split] = np.clip(np.round(draws), 2, 5 * config.images_per_id).astype(np.int64)
        else:
            counts[split] = np.full(n_ids, config.images_per_id, dtype=np.int64)
    return counts


def identity_face(config: DemoConfig, identity_index: int) -> FaceParams:
    """The fixed appearance of global identity ``identity_index``."""
    return sample_face(np.random.default_rng([config.seed, 0, identity_index]))


def identity_view(config: DemoConfig, identity_index: int, image_index: int) -> ImageView:
    """The nuisances of image ``image_index`` of identity ``identity_index`` (independent of the others)."""
    return sample_view(
        np.random.default_rng([config.seed, 1, identity_index, image_index]), config.difficulty
    )


def render_identity_image(config: DemoConfig, identity_index: int, image_index: int) -> np.ndarray:
    """The RGB image ``image_index`` of global identity ``identity_index``, exactly as the dataset holds it."""
    face = identity_face(config, identity_index)
    return render_face(face, identity_view(config, identity_index, image_index), config.image_size)


def _config_record(config: DemoConfig) -> dict:
    return {"generator_version": GENERATOR_VERSION, "config": asdict(config)}


def _reuse_existing(out_dir: Path, record: dict) -> Path | None:
    """Manifest of an identical dataset already in ``out_dir``; None when the folder is absent or empty."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a folder")
    config_file = out_dir / CONFIG_FILE
    if config_file.is_file():
        existing = json.loads(config_file.read_text(encoding="utf-8"))
        if existing == record and (out_dir / MANIFEST_FILE).is_file():
            return out_dir / MANIFEST_FILE
        theirs = {**existing.get("config", {}), "generator_version": existing.get("generator_version")}
        ours = {**record["config"], "generator_version": record["generator_version"]}
        diff = ", ".join(
            f"{k}={theirs.get(k)!r} (asked {v!r})" for k, v in ours.items() if theirs.get(k) != v
        )
        raise DataError(
            out_dir, f"holds a different demo dataset ({diff}); refusing to overwrite it: pick another folder"
        )
    if any(out_dir.iterdir()):
        raise DataError(out_dir, "exists, is not empty and holds no demo dataset; refusing to write into it")
    return None


def generate_demo_dataset(
    out_dir: str | Path, config: DemoConfig | None = None, progress: bool = False
) -> Path:
    """Write the demo dataset into ``out_dir`` (atomically) and return its manifest path.

    An identical dataset already there is reused; a different one is never overwritten (DataError).
    """
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    record = _config_record(config)
    existing = _reuse_existing(out_dir, record)
    if existing is not None:
        return existing
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_dataset(tmp, config, progress)
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, out_dir)  # atomic; allowed onto an empty folder, fails onto a full one
        except OSError:
            # Another process finished the same folder first: reuse it if identical, else refuse.
            existing = _reuse_existing(out_dir, record)
            if existing is None:
                raise
            shutil.rmtree(tmp)
            return existing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / MANIFEST_FILE


def _write_dataset(root: Path, config: DemoConfig, progress: bool) -> None:
    counts = images_per_identity(config)
    rows: list[tuple[str, int, str, str]] = []
    identity_index = 0
    total = sum(config.identity_counts().values())
    bar = tqdm(total=total, desc="demo identities", unit="id", disable=None if progress else True)
    for split in SPLITS:
        for local, n_images in enumerate(counts[split]):
            identity = f"id{identity_index:05d}"
            label = local if split == "labelled" else -1
            folder = root / "images" / identity
            folder.mkdir(parents=True)
            face = identity_face(config, identity_index)
            layers = face_layers(face, config.image_size)
            for k in range(int(n_images)):
                image = render_face(face, identity_view(config, identity_index, k), config.image_size, layers)
                ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
                if not ok:
                    raise DataError(folder / f"{k:03d}.png", "PNG encoding failed")
                (folder / f"{k:03d}.png").write_bytes(encoded.tobytes())
                rows.append((f"images/{identity}/{k:03d}.png", label, identity, split))
            identity_index += 1
            bar.update()
    bar.close()
    frame = pd.DataFrame(rows, columns=["path", "label", "identity", "split"]).astype({"label": "int64"})
    write_manifest(frame, root / MANIFEST_FILE)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``semiface-demo-data --out demo_data [--difficulty 0.5 ...]``."""
    parser = argparse.ArgumentParser(description="Generate the synthetic demo face dataset (deterministic).")
    parser.add_argument(
        "--out", type=Path, default=Path("demo_data"), help="output folder (default: demo_data)"
    )
    defaults = DemoConfig()
    for field in fields(DemoConfig):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")
    args = parser.parse_args(argv)
    try:
        config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
        reused = (args.out / CONFIG_FILE).is_file()
        start = time.perf_counter()
        manifest_path = generate_demo_dataset(args.out, config, progress=True)
    except (ConfigError, DataError) as exc:
        parser.exit(2, f"error: {exc}\n")
    frame = pd.read_parquet(manifest_path)
    summary = frame.groupby("split", sort=False).agg(
        identities=("identity", "nunique"), images=("path", "size")
    )
    verb = "reused" if reused else f"generated in {time.perf_counter() - start:.1f} s"
    print(
        f"demo dataset {verb}: {manifest_path} ({len(frame)} images of {config.image_size}x{config.image_size} px)"
    )
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
