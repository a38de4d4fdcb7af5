"""Identification and verification from one pass over the distractors (what ``evaluate`` runs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recognition_eval.identification import (
    DEFAULT_MAX_RANK,
    DEFAULT_SIZES,
    IdentificationResult,
    build_identification,
    check_max_rank,
    distractor_order,
    used_sizes,
)
from recognition_eval.inputs import ProbeSet, check_distractors, prepare_probes, warn_renormalised
from recognition_eval.scan import DEFAULT_MAX_BYTES, ProgressReport, score_probes
from recognition_eval.verification import DEFAULT_FARS, VerificationResult, build_verification
from semiface.devices import resolve_device


@dataclass(frozen=True)
class ProtocolResult:
    probes: ProbeSet
    identification: IdentificationResult
    verification: VerificationResult
    device: str


def run_protocol(
    probe_features: np.ndarray,
    probe_identities: Sequence | np.ndarray,
    distractor_source: np.ndarray,
    distractor_rows: np.ndarray | None = None,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    max_rank: int = DEFAULT_MAX_RANK,
    fars: Sequence[float] = DEFAULT_FARS,
    seed: int = 0,
    device: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    probe_name: str | Path = "probe features",
    distractor_name: str | Path = "distractor features",
    progress: ProgressReport = False,
) -> ProtocolResult:
    """Identification (rank-1/CMC per size) and verification (negatives from the largest size).

    ``distractor_rows`` selects the distractors among the rows of ``distractor_source`` (e.g. the
    ``split == "distractor"`` rows of a memory-mapped features file, read block by block); default all.
    """
    max_rank = check_max_rank(max_rank)
    probes = prepare_probes(probe_features, probe_identities, probe_name)
    rows = (
        np.arange(len(distractor_source))
        if distractor_rows is None
        else np.asarray(distractor_rows, np.int64)
    )
    check_distractors(distractor_source, len(rows), probes.features.shape[1], distractor_name)
    sizes_used = used_sizes(sizes, len(rows))
    torch_device = resolve_device(device)
    scores = score_probes(
        probes,
        distractor_source,
        rows[distractor_order(len(rows), seed)],
        sizes_used,
        top_k=max_rank,
        verification=True,
        device=torch_device,
        max_bytes=max_bytes,
        distractor_source=distractor_name,
        progress=progress,
    )
    warn_renormalised(scores.n_renormalised_distractors, sizes_used[-1], distractor_name)
    identification = build_identification(
        probes, scores, requested_sizes=sizes, n_distractors=len(rows), max_rank=max_rank, seed=seed
    )
    return ProtocolResult(probes, identification, build_verification(scores, fars), str(torch_device))
