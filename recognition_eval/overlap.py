"""Identity-overlap guard: probe identities that also appear in training inflate identification.

Two checks, each run when its inputs are given:
- by name: probe identity names that are also training identity names (compared case-insensitively,
  surrounding spaces ignored);
- by features: the cosine between each probe identity's feature centroid and each training class
  centroid (rows with a negative training label, i.e. unlabelled, are ignored); pairs at or above
  ``threshold`` are reported. A heuristic: a probe identity whose centroid
  sits that close to a training class is very likely the same person under another name.
Found overlaps are reported and warned about, never dropped silently: the caller decides.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recognition_eval.inputs import EvaluationWarning
from semiface.errors import DataError
from semiface.features import check_features

DEFAULT_CENTROID_THRESHOLD = 0.8
_ROWS_PER_BLOCK = 65536


@dataclass(frozen=True)
class FeatureOverlap:
    probe_identity: str
    train_label: int
    cosine: float


@dataclass(frozen=True)
class OverlapReport:
    by_name: tuple[str, ...] = ()
    by_features: tuple[FeatureOverlap, ...] = ()
    checked_names: bool = False
    checked_features: bool = False
    threshold: float = DEFAULT_CENTROID_THRESHOLD
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def found(self) -> bool:
        return bool(self.by_name or self.by_features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "checked_names": self.checked_names,
            "checked_features": self.checked_features,
            "threshold": self.threshold,
            "by_name": list(self.by_name),
            "by_features": [
                {"probe_identity": o.probe_identity, "train_label": o.train_label, "cosine": o.cosine}
                for o in self.by_features
            ],
            "notes": list(self.notes),
        }


def check_identity_overlap(
    probe_identities: Sequence | np.ndarray,
    train_identities: Iterable[str] | None = None,
    probe_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    threshold: float = DEFAULT_CENTROID_THRESHOLD,
) -> OverlapReport:
    """Report probe identities found among the training identities (see the module docstring)."""
    probe_identities = np.asarray(probe_identities).astype(str)
    notes = []
    by_name: tuple[str, ...] = ()
    if train_identities is not None:
        train_keys = {_key(name) for name in train_identities}
        by_name = tuple(sorted({p for p in probe_identities if _key(p) in train_keys}))
    by_features: tuple[FeatureOverlap, ...] = ()
    checked_features = probe_features is not None and train_features is not None and train_labels is not None
    if checked_features:
        by_features = _centroid_overlaps(
            probe_identities, probe_features, train_features, train_labels, threshold
        )
    elif any(x is not None for x in (probe_features, train_features, train_labels)):
        notes.append("feature check skipped: it needs probe_features, train_features and train_labels")
    report = OverlapReport(
        by_name, by_features, train_identities is not None, checked_features, threshold, tuple(notes)
    )
    if report.found:
        warnings.warn(describe(report), EvaluationWarning, stacklevel=2)
    return report


def describe(report: OverlapReport) -> str:
    """One line for logs and warnings."""
    if not report.found:
        return "identity overlap: none found"
    parts = []
    if report.by_name:
        shown = ", ".join(report.by_name[:5]) + (", ..." if len(report.by_name) > 5 else "")
        parts.append(f"{len(report.by_name)} probe identities also in training by name ({shown})")
    if report.by_features:
        shown = ", ".join(
            f"{o.probe_identity}~class {o.train_label} ({o.cosine:.3f})" for o in report.by_features[:5]
        )
        parts.append(
            f"{len(report.by_features)} probe identities with a training class centroid at cosine >= "
            f"{report.threshold} ({shown})"
        )
    return "identity overlap: " + "; ".join(parts) + ": identification results are inflated"


def _key(name: Any) -> str:
    return str(name).strip().casefold()


def _centroid_overlaps(
    probe_identities: np.ndarray,
    probe_features: np.ndarray,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    threshold: float,
) -> tuple[FeatureOverlap, ...]:
    probe_features = np.asarray(probe_features)
    check_features(probe_features, "probe features")
    if len(probe_features) != len(probe_identities):
        raise DataError(
            "probe features", f"{len(probe_features)} rows but {len(probe_identities)} probe identities"
        )
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_labels) != len(train_features):
        raise DataError(
            "train features", f"{len(train_features)} rows but {len(train_labels)} training labels"
        )
    if train_features.shape[1] != probe_features.shape[1]:
        raise DataError(
            "train features",
            f"{train_features.shape[1]} feature columns, probe features have {probe_features.shape[1]}",
        )
    probe_names, probe_codes = np.unique(probe_identities, return_inverse=True)
    probe_centroids = _unit(_class_sums(probe_features, probe_codes, len(probe_names)))
    train_classes = np.unique(train_labels[train_labels >= 0])
    if len(train_classes) == 0:
        return ()
    train_codes = np.where(train_labels >= 0, np.searchsorted(train_classes, train_labels), -1)
    train_centroids = _unit(_class_sums(train_features, train_codes, len(train_classes)))
    cosines = probe_centroids @ train_centroids.T
    found = []
    for p, t in zip(*np.nonzero(cosines >= threshold), strict=True):
        found.append(FeatureOverlap(str(probe_names[p]), int(train_classes[t]), float(cosines[p, t])))
    return tuple(sorted(found, key=lambda o: -o.cosine))


def _class_sums(features: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Sum of the unit-normalised rows of each class (code -1: skipped), read in blocks (memory maps welcome)."""
    sums = torch.zeros((n_classes, features.shape[1]), dtype=torch.float64)
    for start in range(0, len(features), _ROWS_PER_BLOCK):
        block_codes = codes[start : start + _ROWS_PER_BLOCK]
        keep = np.flatnonzero(block_codes >= 0)
        if len(keep) == 0:
            continue
        block = np.asarray(features[start + keep], dtype=np.float64)
        if not np.isfinite(block).all():
            bad = (start + keep[~np.isfinite(block).all(axis=1)])[:5].tolist()
            raise DataError("train features", f"NaN or infinite values in rows {bad} (first 5 shown)")
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        sums.index_add_(0, torch.from_numpy(block_codes[keep]), torch.from_numpy(block))
    return sums.numpy()


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
