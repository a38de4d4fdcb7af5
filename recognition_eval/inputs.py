"""Checking and preparing evaluation inputs: probe features with identities, distractor features.

Policies (documented in docs/evaluation.md):
- NaN / infinite values or zero-norm rows: ``DataError`` naming the source and the rows.
- Rows whose L2 norm is off 1 by more than ``NORM_TOLERANCE``: normalised, with an ``EvaluationWarning``
  saying how many (features.npy is L2-normalised by contract, so this usually means raw features).
  Rows within the tolerance are used bit for bit as given, so duplicated images score exact ties.
- Probe identities with a single image: they form no pair, so they are left out (of identification
  and verification), counted and named in the result, with an ``EvaluationWarning``.
- No distractors, or a different feature dimension for probes and distractors: ``DataError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiface.errors import DataError
from semiface.features import check_features

NORM_TOLERANCE = 1e-4


class EvaluationWarning(UserWarning):
    """Something about the inputs was fixed or left out; the result is still computed."""


@dataclass(frozen=True)
class ProbeSet:
    """Probe images that take part in the protocol (identities with two or more images)."""

    features: np.ndarray  # float32 [N, D], unit rows
    codes: np.ndarray  # int64 [N], identity index into ``names``
    names: tuple[str, ...]  # identity names of the kept probes, indexed by ``codes``
    left_out_identities: tuple[str, ...]  # identities with a single image
    n_left_out_images: int
    n_renormalised: int  # rows whose norm was off 1 and were normalised

    @property
    def n_identities(self) -> int:
        return len(self.names)

    @property
    def n_pairs(self) -> int:
        """Ordered same-identity pairs (p, g), p != g: sum of n(n - 1)."""
        counts = np.bincount(self.codes, minlength=len(self.names)).astype(np.int64)
        return int((counts * (counts - 1)).sum())


def normalise_rows(features: np.ndarray, source: str | Path) -> tuple[np.ndarray, int]:
    """Return a float32 copy whose rows off unit norm are normalised, and how many were (NaN/zero refused)."""
    features = np.asarray(features)
    check_features(features, source)
    out = np.array(features, dtype=np.float32)
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    out[off] = (out[off] / norms[off, None]).astype(np.float32)
    return out, int(off.sum())


def warn_renormalised(n_rows: int, n_total: int, source: str | Path) -> None:
    """Warn that ``n_rows`` of ``n_total`` rows were normalised here (no-op when zero)."""
    if n_rows:
        warnings.warn(
            f"{source}: {n_rows} of {n_total} rows were not L2-normalised (|norm - 1| > {NORM_TOLERANCE}); "
            "normalised them before scoring",
            EvaluationWarning,
            stacklevel=3,
        )


def prepare_probes(
    features: np.ndarray, identities: Sequence | np.ndarray, source: str | Path = "probe features"
) -> ProbeSet:
    """Validate probe features and identities, normalise, and leave out single-image identities."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise DataError(source, f"expected a 2-D [N, D] array, found shape {features.shape}")
    identities = np.asarray(identities).astype(str)
    if identities.ndim != 1 or len(identities) != len(features):
        raise DataError(source, f"{len(features)} feature rows but {identities.size} probe identities")
    unit, n_off = normalise_rows(features, source)
    warn_renormalised(n_off, len(unit), source)

    names, codes, counts = np.unique(identities, return_inverse=True, return_counts=True)
    single = counts[codes] < 2
    left_out = tuple(str(n) for n in names[counts < 2])
    if left_out:
        warnings.warn(
            f"{source}: {len(left_out)} probe identities have a single image and form no pair; "
            f"left out ({', '.join(left_out[:5])}{', ...' if len(left_out) > 5 else ''})",
            EvaluationWarning,
            stacklevel=2,
        )
    kept = ~single
    if not kept.any():
        raise DataError(source, "no probe identity has two or more images: there is no pair to evaluate")
    kept_names, kept_codes = np.unique(identities[kept], return_inverse=True)
    return ProbeSet(
        features=np.ascontiguousarray(unit[kept]),
        codes=kept_codes.astype(np.int64),
        names=tuple(str(n) for n in kept_names),
        left_out_identities=left_out,
        n_left_out_images=int(single.sum()),
        n_renormalised=n_off,
    )


def check_distractors(distractors: np.ndarray, n_rows: int, dim: int, source: str | Path) -> None:
    """Refuse an empty distractor set or one whose dimension differs from the probes'."""
    if distractors.ndim != 2:
        raise DataError(source, f"expected a 2-D [N, D] array, found shape {distractors.shape}")
    if n_rows == 0:
        raise DataError(
            source,
            "no distractors: MegaFace identification needs at least one (rank-1 against 0 is always 1)",
        )
    if distractors.shape[1] != dim:
        raise DataError(source, f"distractors have {distractors.shape[1]} feature columns, probes have {dim}")
