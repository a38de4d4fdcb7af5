"""Verification: TAR at FAR 1e-1 .. 1e-6, and ROC points.

Positives: same-identity probe pairs (each unordered pair once). Negatives: different-identity probe
pairs plus every probe x distractor pair of the largest distractor set. Scores are histogrammed
(``recognition_eval.histogram``), never listed. The threshold for a FAR f is the lowest bin edge t
with #(negatives >= t) <= f * n_negatives; TAR = #(positives >= t) / n_positives. The FAR actually
reached at t is reported beside f. A FAR below 1 / n_negatives cannot be measured: its TAR is NaN
and ``measurable`` is False.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recognition_eval.histogram import ScoreHistogram
from recognition_eval.identification import distractor_order, used_sizes
from recognition_eval.inputs import check_distractors, prepare_probes, warn_renormalised
from recognition_eval.scan import DEFAULT_MAX_BYTES, ProgressReport, Scores, score_probes
from semiface.devices import resolve_device
from semiface.errors import ConfigError, DataError

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ROC_POINTS = 121


@dataclass(frozen=True)
class VerificationResult:
    """TAR at each requested FAR, with the counts that say which FARs are measurable."""

    fars: np.ndarray  # requested FARs
    tar: np.ndarray  # NaN where not measurable
    thresholds: np.ndarray  # cosine threshold used per FAR (NaN where not measurable)
    achieved_far: np.ndarray  # FAR actually reached at that threshold (<= requested)
    measurable: np.ndarray  # bool: far >= 1 / n_negatives
    n_positives: int
    n_negatives: int
    n_negative_probe_pairs: int
    n_negative_distractor_pairs: int
    n_distractors: int
    roc_far: np.ndarray  # ROC points (achieved FAR, TAR), FAR ascending
    roc_tar: np.ndarray
    bin_width: float

    @property
    def min_measurable_far(self) -> float:
        return 1.0 / self.n_negatives if self.n_negatives else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; unmeasurable TARs are null."""
        return {
            "fars": self.fars.tolist(),
            "tar": _nan_to_none(self.tar),
            "thresholds": _nan_to_none(self.thresholds),
            "achieved_far": _nan_to_none(self.achieved_far),
            "measurable": self.measurable.tolist(),
            "n_positives": self.n_positives,
            "n_negatives": self.n_negatives,
            "n_negative_probe_pairs": self.n_negative_probe_pairs,
            "n_negative_distractor_pairs": self.n_negative_distractor_pairs,
            "n_distractors": self.n_distractors,
            "min_measurable_far": self.min_measurable_far,
            "roc_far": self.roc_far.tolist(),
            "roc_tar": self.roc_tar.tolist(),
            "bin_width": self.bin_width,
        }


def tar_at_far(
    positives: ScoreHistogram, negatives: ScoreHistogram, fars: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tar, threshold, achieved_far, measurable) for each FAR, from score histograms."""
    fars = np.asarray(fars, dtype=np.float64)
    pos_above = positives.at_or_above()
    neg_above = negatives.at_or_above()
    n_pos, n_neg = int(pos_above[0]), int(neg_above[0])
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            "verification", f"{n_pos} positive and {n_neg} negative pairs: need at least one of each"
        )
    measurable = fars * n_neg >= 1.0
    # neg_above is non-increasing and ends at 0: the first bin whose tail fits the FAR budget.
    first_bin = len(neg_above) - np.searchsorted(neg_above[::-1], np.floor(fars * n_neg), side="right")
    tar = np.where(measurable, pos_above[first_bin] / n_pos, np.nan)
    thresholds = np.where(measurable, negatives.lower_edge(first_bin), np.nan)
    achieved = np.where(measurable, neg_above[first_bin] / n_neg, np.nan)
    return tar, thresholds, achieved, measurable


def roc_points(positives: ScoreHistogram, negatives: ScoreHistogram) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at log-spaced FAR targets from 1 / n_negatives to 1, FAR ascending."""
    n_neg = negatives.total
    targets = np.logspace(np.log10(1.0 / n_neg), 0.0, ROC_POINTS)
    tar, _, achieved, _ = tar_at_far(positives, negatives, targets * (1 + 1e-9))
    return achieved, tar


def build_verification(scores: Scores, fars: Sequence[float]) -> VerificationResult:
    """Turn the scan's histograms into a VerificationResult."""
    fars = np.asarray(fars, dtype=np.float64)
    if fars.size == 0 or (fars <= 0).any() or (fars > 1).any():
        raise ConfigError(f"fars: expected FARs in (0, 1], got {fars.tolist()}")
    tar, thresholds, achieved, measurable = tar_at_far(scores.positives, scores.negatives, fars)
    roc_far, roc_tar = roc_points(scores.positives, scores.negatives)
    return VerificationResult(
        fars=fars,
        tar=tar,
        thresholds=thresholds,
        achieved_far=achieved,
        measurable=measurable,
        n_positives=scores.positives.total,
        n_negatives=scores.negatives.total,
        n_negative_probe_pairs=scores.n_negative_probe_pairs,
        n_negative_distractor_pairs=scores.n_negative_distractor_pairs,
        n_distractors=scores.sizes[-1] if scores.sizes else 0,
        roc_far=roc_far,
        roc_tar=roc_tar,
        bin_width=scores.negatives.width,
    )


def verification_tar(
    probe_features: np.ndarray,
    probe_identities: Sequence | np.ndarray,
    distractor_features: np.ndarray | None = None,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    n_distractors: int | None = None,
    seed: int = 0,
    device: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: ProgressReport = False,
) -> VerificationResult:
    """TAR at FAR over probe pairs and probe x distractor pairs (see the module docstring).

    ``n_distractors`` limits the negatives to that many distractors (the same seeded subset that
    identification uses at that size); default all. Without distractors only probe pairs are used.
    """
    probes = prepare_probes(probe_features, probe_identities)
    if distractor_features is None:
        distractor_features = np.empty((0, probes.features.shape[1]), dtype=np.float32)
        sizes: tuple[int, ...] = (0,)
    else:
        check_distractors(
            distractor_features, len(distractor_features), probes.features.shape[1], "distractor features"
        )
        sizes = used_sizes([n_distractors or len(distractor_features)], len(distractor_features))
    scores = score_probes(
        probes,
        distractor_features,
        distractor_order(len(distractor_features), seed),
        sizes,
        top_k=0,
        verification=True,
        device=resolve_device(device),
        max_bytes=max_bytes,
        progress=progress,
    )
    warn_renormalised(scores.n_renormalised_distractors, sizes[-1], "distractor features")
    return build_verification(scores, fars)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]
