"""Augmentation recipes: output contract, strength knob, the auto rule, per-sample keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbone.augment import (
    FLIP_FROM_IMAGES,
    AlbumentationsRecipe,
    flip_flags,
    resolve_augment,
    sample_keys,
)
from backbone.model_input import normalise
from semiface.errors import ConfigError


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 40 * 40 * 3).reshape(40, 40, 3)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_normalise_maps_uint8_to_minus_one_one_as_the_model_expects(image):
    out = normalise(torch.from_numpy(image)[None].permute(0, 3, 1, 2))
    assert out.shape == (1, 3, 40, 40) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out[0].numpy(), image.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)


def test_strength_zero_is_resize_only_and_strength_one_changes_images(image):
    keys = sample_keys(0, 0, np.arange(20))
    plain = AlbumentationsRecipe(24, 0.0)
    resized = plain(image, keys[0])
    assert resized.shape == (24, 24, 3) and resized.dtype == np.uint8
    assert all(np.array_equal(plain(image, k), resized) for k in keys)
    strong = AlbumentationsRecipe(40, 1.0)
    changed = sum(not np.array_equal(strong(image, k), image) for k in keys)
    assert changed >= 15


def test_the_same_key_gives_the_same_augmentation_in_any_recipe_instance(image):
    a, b = AlbumentationsRecipe(40, 1.0), AlbumentationsRecipe(40, 1.0)
    key, other_epoch = sample_keys(7, 2, np.array([11])), sample_keys(7, 3, np.array([11]))
    b(image, sample_keys(7, 2, np.array([12]))[0])  # b's last sample is another one: no state carried over
    assert np.array_equal(a(image, key[0]), b(image, key[0]))
    assert not np.array_equal(a(image, other_epoch[0]), a(image, key[0]))


def test_sample_keys_are_a_function_of_seed_epoch_and_index():
    keys = sample_keys(3, 1, np.arange(10_000))
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(keys)
    assert np.array_equal(sample_keys(3, 1, np.arange(5, 10)), keys[5:10])  # order and batch do not matter
    assert np.array_equal(sample_keys(3, np.ones(4, np.int64), np.arange(4)), keys[:4])
    assert not np.array_equal(sample_keys(3, 2, np.arange(10)), keys[:10])
    assert not np.array_equal(sample_keys(4, 1, np.arange(10)), keys[:10])
    flips = flip_flags(keys)
    assert abs(flips.mean() - 0.5) < 0.02  # measured 0.504 (binomial sd 0.005)


def test_auto_picks_flip_for_large_sets_and_albumentations_for_small_ones():
    assert resolve_augment("auto", FLIP_FROM_IMAGES) == "flip"
    assert resolve_augment("auto", FLIP_FROM_IMAGES - 1) == "albumentations"
    assert resolve_augment("albumentations", 10**7) == "albumentations"
    assert resolve_augment("flip", 10) == "flip"
    with pytest.raises(ConfigError, match="augment: 'mixup' is not one of"):
        resolve_augment("mixup", 10)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_out_of_range_is_refused(strength):
    with pytest.raises(ConfigError, match="aug_strength"):
        AlbumentationsRecipe(40, strength)
