"""Image pipelines (albumentations 2.0): training augmentation with a strength knob, and evaluation.

Both take an RGB uint8 HWC array and return a float32 CHW tensor in [-1, 1] at ``image_size``,
the input the embedding model expects. The training pipeline is reseeded per sample
(:meth:`SeededTransform.reseed`) so a sample's augmentation depends only on (seed, epoch, index):
the same with any number of loader workers and after a resume.
"""

from __future__ import annotations

import random

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from semiface.errors import ConfigError


def _resize_and_normalise(image_size: int) -> list[A.BasicTransform]:
    return [
        A.Resize(image_size, image_size, area_for_downscale="image"),
        A.Normalize(mean=0.5, std=0.5, max_pixel_value=255.0),  # [0, 255] -> [-1, 1]
        ToTensorV2(),
    ]


def _augmentations(image_size: int, strength: float) -> list[A.BasicTransform]:
    """Face-safe augmentations whose probability and range grow with ``strength``."""
    if strength == 0.0:
        return []
    max_kernel = 3 + 2 * round(2 * strength)  # odd: 3, 5 or 7
    return [
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


class SeededTransform:
    """An albumentations pipeline returning a CHW tensor, with one shared, reseedable random state."""

    def __init__(self, transforms: list[A.BasicTransform], seed: int = 0) -> None:
        self.pipeline = A.Compose(transforms, seed=seed)
        self.reseed(seed)

    def reseed(self, seed: int | list[int]) -> None:
        """Give every transform the same fresh generators (albumentations seeds each separately, which
        would make their random draws identical and their decisions correlated)."""
        generator = np.random.default_rng(seed)
        py_random = random.Random(int(generator.integers(2**63)))
        stack: list = [self.pipeline]
        while stack:
            transform = stack.pop()
            transform.set_random_state(generator, py_random)
            stack.extend(getattr(transform, "transforms", []))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.pipeline(image=image)["image"]


def train_transform(image_size: int, strength: float, seed: int = 0) -> SeededTransform:
    """Augmentation at ``strength`` in [0, 1] (0: resize and normalise only), then resize + normalise."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"aug_strength: must be in [0, 1], got {strength}")
    # Resize first, so blur kernels and hole sizes are relative to the model's input.
    resize, normalise, to_tensor = _resize_and_normalise(image_size)
    return SeededTransform([resize, *_augmentations(image_size, strength), normalise, to_tensor], seed)


def eval_transform(image_size: int) -> SeededTransform:
    """Resize + normalise only (deterministic)."""
    return SeededTransform(_resize_and_normalise(image_size))
