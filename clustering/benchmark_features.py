"""Generated MS1M-like face features for clustering benchmarks (no images needed).

The model of the feature space, on the unit sphere in ``dim`` dimensions:

* every identity has a centre; identities come in small look-alike *families* whose centres
  share a direction (cosine ``family_similarity`` between family members);
* an image is its identity's centre plus noise of a per-identity scale (log-uniform between
  ``spread_min`` and ``spread_max``: some people vary little, some a lot, so no single cosine
  threshold suits all); a share ``nuisance_share`` of the noise lies in a low-dimensional
  subspace shared by everyone (pose, light, age), which lifts the cosine of unrelated images taken
  in the same conditions: a linkage that learns to discount that subspace from labelled data does
  better than raw cosine;
* images per identity follow a long-tailed (log-normal) law;
* a share ``hard_fraction`` of images is pulled toward a look-alike identity (bridges that chain
  clusters together under union-find), and ``outlier_fraction`` are unrelated directions that keep
  their label (mislabelled or broken crops).

The defaults give intra-identity cosine mostly 0.4-0.8 and inter-identity cosine centred near 0
with a tail past 0.3 (numbers stated and checked in tests/test_benchmark_features.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from semiface.errors import ConfigError


@dataclass(frozen=True)
class BenchmarkConfig:
    """Parameters of the generated feature space (see the module docstring)."""

    dim: int = 256
    images_median: float = 12.0
    images_sigma: float = 0.9
    images_min: int = 2
    images_max: int = 300
    spread_min: float = 0.55
    spread_max: float = 1.25
    nuisance_dims: int = 24
    nuisance_share: float = 0.6
    family_size_max: int = 4
    family_similarity: float = 0.35
    hard_fraction: float = 0.05
    hard_pull: tuple[float, float] = (0.3, 0.6)
    outlier_fraction: float = 0.02

    def __post_init__(self) -> None:
        checks = {
            "dim": self.dim >= 2,
            "images_min": 1 <= self.images_min <= self.images_max,
            "spread_min": 0 < self.spread_min <= self.spread_max,
            "nuisance_dims": 1 <= self.nuisance_dims < self.dim,
            "nuisance_share": 0 <= self.nuisance_share <= 1,
            "family_size_max": self.family_size_max >= 1,
            "family_similarity": 0 <= self.family_similarity < 1,
            "hard_fraction": 0 <= self.hard_fraction <= 1,
            "hard_pull": 0 <= self.hard_pull[0] <= self.hard_pull[1] <= 1,
            "outlier_fraction": 0 <= self.outlier_fraction <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"BenchmarkConfig: out-of-range value for {', '.join(bad)}: {self}")


@dataclass
class BenchmarkSplits:
    """A labelled training part and unlabelled test parts of growing size (nested, disjoint from train)."""

    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: list[np.ndarray] = field(default_factory=list)
    test_labels: list[np.ndarray] = field(default_factory=list)


def generate_benchmark_features(
    n_identities: int, *, config: BenchmarkConfig | None = None, seed: int = 0, world_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Features float32 [N, dim] (unit rows, shuffled) and identity labels int64 [N] in 0..n_identities-1.

    ``world_seed`` fixes what all sets share (the nuisance subspace); ``seed`` draws the identities
    and their images. Same seeds, same arrays.
    """
    config = config or BenchmarkConfig()
    if n_identities < 1:
        raise ConfigError(f"generate_benchmark_features: n_identities must be >= 1, got {n_identities}")
    nuisance = _nuisance_basis(config, world_seed)
    rng = np.random.default_rng([world_seed, seed])
    centres, family = _identity_centres(n_identities, config, rng)
    counts = _images_per_identity(n_identities, config, rng)
    labels = np.repeat(np.arange(n_identities, dtype=np.int64), counts)
    spread = np.exp(rng.uniform(np.log(config.spread_min), np.log(config.spread_max), n_identities))

    n = len(labels)
    noise = _noise(n, config, nuisance, rng)
    base = centres[labels]
    hard = rng.random(n) < config.hard_fraction
    target = _look_alike(labels[hard], family, rng)
    pull = rng.uniform(*config.hard_pull, size=int(hard.sum()))[:, None]
    base[hard] = (1 - pull) * base[hard] + pull * centres[target]
    features = base + spread[labels, None] * noise
    outlier = rng.random(n) < config.outlier_fraction
    features[outlier] = rng.standard_normal((int(outlier.sum()), config.dim))
    features /= np.linalg.norm(features, axis=1, keepdims=True)

    order = rng.permutation(n)
    return features[order].astype(np.float32), labels[order]


def benchmark_splits(
    n_train_identities: int,
    test_identities: Sequence[int],
    *,
    config: BenchmarkConfig | None = None,
    seed: int = 0,
) -> BenchmarkSplits:
    """Train part with ``n_train_identities`` and test parts with ``test_identities[i]`` identities each.

    Like learn-to-cluster's part0_train and part1..part9_test: test identities are disjoint from the
    train ones, and each test part holds the identities of the smaller ones plus new ones.
    """
    sizes = list(test_identities)
    if sizes != sorted(sizes) or (sizes and sizes[0] < 1):
        raise ConfigError(f"benchmark_splits: test_identities must be positive and increasing, got {sizes}")
    train_features, train_labels = generate_benchmark_features(
        n_train_identities, config=config, seed=2 * seed, world_seed=seed
    )
    splits = BenchmarkSplits(train_features, train_labels)
    if not sizes:
        return splits
    features, labels = generate_benchmark_features(sizes[-1], config=config, seed=2 * seed + 1, world_seed=seed)
    for size in sizes:
        keep = labels < size
        splits.test_features.append(features[keep])
        splits.test_labels.append(labels[keep])
    return splits


def _nuisance_basis(config: BenchmarkConfig, world_seed: int) -> np.ndarray:
    """Orthonormal [nuisance_dims, dim] rows scaled by a decaying spectrum (unit total variance)."""
    rng = np.random.default_rng([world_seed, 1_000_003])
    basis, _ = np.linalg.qr(rng.standard_normal((config.dim, config.nuisance_dims)))
    spectrum = 1.0 / (1.0 + np.arange(config.nuisance_dims) / 4.0)
    return basis.T * np.sqrt(spectrum / spectrum.sum())[:, None]


def _identity_centres(n: int, config: BenchmarkConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit centres [n, dim] in consecutive look-alike families, and each identity's family id."""
    family_sizes = rng.integers(1, config.family_size_max + 1, size=n)
    family = np.repeat(np.arange(n), family_sizes)[:n]
    shared = rng.standard_normal((n, config.dim))
    own = rng.standard_normal((n, config.dim))
    shared /= np.linalg.norm(shared, axis=1, keepdims=True)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    rho = config.family_similarity
    centres = np.sqrt(rho) * shared[family] + np.sqrt(1 - rho) * own
    return centres / np.linalg.norm(centres, axis=1, keepdims=True), family


def _images_per_identity(n: int, config: BenchmarkConfig, rng: np.random.Generator) -> np.ndarray:
    counts = np.round(config.images_median * np.exp(config.images_sigma * rng.standard_normal(n)))
    return np.clip(counts, config.images_min, config.images_max).astype(np.int64)


def _noise(n: int, config: BenchmarkConfig, nuisance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise of unit expected squared norm, ``nuisance_share`` of it in the shared subspace."""
    isotropic = rng.standard_normal((n, config.dim)) / np.sqrt(config.dim)
    shared = rng.standard_normal((n, config.nuisance_dims)) @ nuisance
    return np.sqrt(1 - config.nuisance_share) * isotropic + np.sqrt(config.nuisance_share) * shared


def _look_alike(identities: np.ndarray, family: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each identity, another member of its family when it has one, else a random other identity."""
    n = len(family)
    if n == 1:
        return identities.copy()
    starts = np.searchsorted(family, family[identities], side="left")
    ends = np.searchsorted(family, family[identities], side="right")
    size = ends - starts
    # draw among the other family members (skip self), or among all others for one-member families
    in_family = starts + (identities - starts + rng.integers(1, np.maximum(size, 2), len(identities))) % np.maximum(size, 1)
    anyone = (identities + rng.integers(1, n, len(identities))) % n
    return np.where(size > 1, in_family, anyone)
