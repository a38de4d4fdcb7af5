"""Training augmentation: the recipes, and each sample's randomness as a function of (seed, epoch, index).

Recipes (``TrainConfig.augment``):

* ``flip``: the face-recognition recipe (arcface_torch's): a horizontal flip with probability 0.5 and
  nothing else. The workers only decode; the flip is a batched tensor op on the device
  (``backbone.model_input``), from the per-sample flags this module draws.
* ``albumentations``: resize, then face-safe albumentations transforms whose probability and range grow
  with ``aug_strength`` (flip, brightness/contrast, blur, downscale, coarse dropout), run in the
  workers on uint8 images (0: resize only). For small data sets, where the heavier augmentation helps.
* ``auto``: ``flip`` from :data:`FLIP_FROM_IMAGES` training images on (MS1M's labelled part, WebFace-size
  sets), ``albumentations`` below (the demo's 2,160, a few thousand faces of one's own).

Randomness: every sample gets a 64-bit key from (seed, epoch, index) by a counter-based hash
(:func:`sample_keys`): no generator state is carried from one sample to the next, so a sample's
augmentation is the same with any number of workers, in any order, and after a resume. The flip recipe
flips where the key's top bit is set; the albumentations recipe sets one shared Philox generator (and
Python's ``random``, which albumentations also draws from) from the key before each sample, instead of
building and handing every transform fresh generators (about 0.1 ms a sample).

albumentations is imported only by the albumentations recipe: the flip recipe runs without it.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from semiface.errors import ConfigError

AUGMENTS = ("auto", "flip", "albumentations")
RECIPES = ("flip", "albumentations")
# ``auto`` picks the flip recipe from this many training images on: arcface_torch trains every set it
# ships (CASIA-WebFace's 0.49M images and up) with flips alone; below 100K images, a few thousand
# people at most, the heavier augmentation is what keeps a ResNet from memorising them.
FLIP_FROM_IMAGES = 100_000

_U64 = np.uint64
# SplitMix64 (Steele, Lea and Flood, 2014): its increment and finaliser. Written here because numpy's
# counter-based generators (Philox, SeedSequence) take one key at a time: a batch's flip flags would
# cost a generator per sample.
_GAMMA = _U64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)


def resolve_augment(augment: str, num_images: int) -> str:
    """The recipe ``augment`` means for a training set of ``num_images`` images (``auto``: by size)."""
    if augment not in AUGMENTS:
        raise ConfigError(f"TrainConfig.augment: {augment!r} is not one of {list(AUGMENTS)}")
    if augment == "auto":
        return "flip" if num_images >= FLIP_FROM_IMAGES else "albumentations"
    return augment


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> _U64(30))) * _MIX1
    x = (x ^ (x >> _U64(27))) * _MIX2
    return x ^ (x >> _U64(31))


def sample_keys(seed: int, epochs: np.ndarray | int, indices: np.ndarray) -> np.ndarray:
    """uint64 key of each sample from (seed, epoch, index): a hash, the same wherever it is computed."""
    words = [np.asarray(v, dtype=np.int64).astype(_U64) for v in (seed, epochs, indices)]
    key = np.zeros(np.broadcast_shapes(*(w.shape for w in words)), dtype=_U64)
    with np.errstate(over="ignore"):  # wrap-around arithmetic modulo 2**64 is the point
        for word in words:
            key = _mix(key ^ (word + _GAMMA))
    return key


def flip_flags(keys: np.ndarray) -> np.ndarray:
    """Which samples the flip recipe mirrors: the key's top bit (probability 0.5)."""
    return (keys >> _U64(63)).astype(bool)


def _albumentations_transforms(image_size: int, strength: float) -> list[Any]:
    """Resize first (blur kernels and hole sizes are then relative to the model's input), then the
    face-safe augmentations whose probability and range grow with ``strength``."""
    import albumentations as A

    resize = A.Resize(image_size, image_size, area_for_downscale="image")
    if strength == 0.0:
        return [resize]
    max_kernel = 3 + 2 * round(2 * strength)  # odd: 3, 5 or 7
    return [
        resize,
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.3 * strength, contrast_limit=0.3 * strength, p=0.8 * strength),
        A.OneOf(
            [A.GaussianBlur(blur_limit=(3, max_kernel), sigma_limit=(0.2, 0.2 + 1.3 * strength)),
             A.MotionBlur(blur_limit=(3, max_kernel))],
            p=0.3 * strength,
        ),
        A.Downscale(scale_range=(1.0 - 0.6 * strength, 1.0), p=0.3 * strength),
        A.CoarseDropout(
            num_holes_range=(1, max(1, round(2 * strength))),
            hole_height_range=(0.1, 0.1 + 0.2 * strength),
            hole_width_range=(0.1, 0.1 + 0.2 * strength),
            fill=0,
            p=0.3 * strength,
        ),
    ]


class AlbumentationsRecipe:
    """The albumentations recipe: RGB uint8 HWC in, RGB uint8 [image_size, image_size, 3] out, its draws
    fixed by the sample's key. Every transform shares one Philox generator and one ``random.Random``,
    both reset from the key before each sample."""

    def __init__(self, image_size: int, strength: float) -> None:
        import albumentations as A

        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"aug_strength: must be in [0, 1], got {strength}")
        self._generator = np.random.Generator(np.random.Philox(0))
        self._py_random = random.Random(0)
        self.pipeline = A.Compose(_albumentations_transforms(image_size, strength))
        self.pipeline.set_random_state(self._generator, self._py_random)  # handed down to every transform

    def __call__(self, image: np.ndarray, key: int) -> np.ndarray:
        key = int(key)
        self._generator.bit_generator.state = {
            "bit_generator": "Philox", "state": {"counter": np.zeros(4, _U64), "key": np.array([key, 0], _U64)},
            "buffer": np.zeros(4, _U64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0,
        }
        self._py_random.seed(key)
        return self.pipeline(image=image)["image"]
