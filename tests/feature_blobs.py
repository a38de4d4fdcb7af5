"""Unit-norm features around random identity centres: the small labelled sets of the clustering tests."""

from __future__ import annotations

import numpy as np


def blobs(identities: int, per: int, seed: int, dim: int = 16, noise: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """``per`` rows for each of ``identities`` centres, with Gaussian ``noise``; float32 [N, dim] and int labels [N]."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    labels = np.repeat(np.arange(identities), per)
    features = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32), labels
