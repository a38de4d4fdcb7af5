"""The scoring passes behind identification and verification, in bounded memory.

One pass over the distractors (in their seeded order, so each distractor-set size is a prefix) keeps,
for every probe, its ``top_k`` highest distractor scores, snapshotted at each size boundary, and
optionally histograms every probe x distractor score. That is all rank-1..top_k needs: a pair (p, g)
is a rank-r hit when fewer than r distractors score >= sim(p, g), i.e. when p's r-th best distractor
scores below sim(p, g). One pass over probe x probe blocks gives the genuine pair scores and the
probe-pair histograms. Nothing larger than a [probes x chunk] score block is ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recognition_eval.histogram import ScoreHistogram
from recognition_eval.inputs import NORM_TOLERANCE, ProbeSet
from semiface.errors import DataError

DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass
class Scores:
    """What the passes collect; identification and verification results are built from it."""

    sizes: tuple[int, ...]  # distractor-set sizes (prefix lengths of the scan order)
    top_scores: list[np.ndarray]  # per size: float32 [probes, top_k], descending, -inf padded
    pair_probe: np.ndarray  # int64 [M]: probe p of each ordered genuine pair (p, g), p != g
    pair_score: np.ndarray  # float32 [M]: sim(p, g)
    positives: ScoreHistogram | None  # same-identity probe pairs (unordered)
    negatives: ScoreHistogram | None  # different-identity probe pairs + probe x distractor pairs
    n_negative_probe_pairs: int
    n_negative_distractor_pairs: int
    n_renormalised_distractors: int


# Progress of a scan: a tqdm bar on stderr (True), none (False), or a callback given the percent done.
ProgressReport = bool | Callable[[float], None]


def columns_per_chunk(n_probes: int, dim: int, max_bytes: int) -> int:
    """Distractors per block: a float32 score and an int32 bin index per probe, the block itself twice."""
    return max(1, max_bytes // (8 * n_probes + 8 * dim))


def score_probes(
    probes: ProbeSet,
    distractors: np.ndarray,
    order: np.ndarray,
    sizes: Sequence[int],
    *,
    top_k: int,
    verification: bool,
    device: torch.device,
    max_bytes: int = DEFAULT_MAX_BYTES,
    distractor_source: str | Path = "distractor features",
    progress: ProgressReport = False,
) -> Scores:
    """Run both passes. ``order``: rows of ``distractors`` in scan order; ``sizes``: ascending prefixes."""
    probe_t = torch.from_numpy(probes.features).to(device)
    codes_t = torch.from_numpy(probes.codes).to(device)
    positives = ScoreHistogram(device=device) if verification else None
    negatives = ScoreHistogram(device=device) if verification else None
    pair_probe, pair_score = _scan_probe_pairs(probe_t, codes_t, positives, negatives, max_bytes)
    n_probe_negatives = negatives.total if negatives is not None else 0
    top_scores, n_off = _scan_distractors(
        probe_t, distractors, order, sizes, top_k, negatives, max_bytes, distractor_source, progress
    )
    return Scores(
        sizes=tuple(sizes),
        top_scores=top_scores,
        pair_probe=pair_probe,
        pair_score=pair_score,
        positives=positives,
        negatives=negatives,
        n_negative_probe_pairs=n_probe_negatives,
        n_negative_distractor_pairs=len(probes.features) * sizes[-1] if verification else 0,
        n_renormalised_distractors=n_off,
    )


def _scan_probe_pairs(
    probes: torch.Tensor,
    codes: torch.Tensor,
    positives: ScoreHistogram | None,
    negatives: ScoreHistogram | None,
    max_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine ordered pairs (p, g), p != g, with their scores; fill the probe-pair histograms."""
    n = probes.shape[0]
    rows_per_block = max(1, max_bytes // (16 * n))
    columns = torch.arange(n, device=probes.device)
    pair_probe, pair_score = [], []
    for start in range(0, n, rows_per_block):
        stop = min(start + rows_per_block, n)
        scores = probes[start:stop] @ probes.T
        rows = torch.arange(start, stop, device=probes.device)[:, None]
        same = codes[start:stop, None] == codes[None, :]
        genuine = same & (columns[None, :] != rows)
        where = genuine.nonzero()
        pair_probe.append((where[:, 0] + start).cpu().numpy())
        pair_score.append(scores[genuine].cpu().numpy())
        if positives is not None and negatives is not None:
            upper = columns[None, :] > rows  # each unordered pair once
            positives.add_(scores[same & upper])
            negatives.add_(scores[~same & upper])
    return np.concatenate(pair_probe).astype(np.int64), np.concatenate(pair_score).astype(np.float32)


def _scan_distractors(
    probes: torch.Tensor,
    distractors: np.ndarray,
    order: np.ndarray,
    sizes: Sequence[int],
    top_k: int,
    negatives: ScoreHistogram | None,
    max_bytes: int,
    source: str | Path,
    progress: ProgressReport,
) -> tuple[list[np.ndarray], int]:
    """Top-k distractor scores per probe at each size boundary; histogram of all scores if asked."""
    n_probes, dim = probes.shape
    chunk = columns_per_chunk(n_probes, dim, max_bytes)
    running = torch.full((n_probes, top_k), -torch.inf, device=probes.device)
    snapshots: list[np.ndarray] = []
    n_off = 0
    start = 0
    report = progress if callable(progress) else None
    with tqdm(total=sizes[-1], unit="distractor", disable=progress is not True, desc="scoring distractors") as bar:
        for size in sizes:
            while start < size:  # blocks never straddle a size boundary
                stop = min(start + chunk, size)
                rows = np.sort(order[start:stop])  # sorted rows read a memory map sequentially
                block = torch.from_numpy(np.asarray(distractors[rows], dtype=np.float32)).to(probes.device)
                block, off = _unit_rows(block, rows, source)
                n_off += off
                scores = probes @ block.T
                if top_k:
                    best = scores.topk(min(top_k, scores.shape[1]), dim=1).values
                    running = torch.cat([running, best], dim=1).topk(top_k, dim=1).values
                if negatives is not None:
                    negatives.add_(scores)
                bar.update(stop - start)
                if report is not None:
                    report(100.0 * stop / sizes[-1])
                start = stop
            snapshots.append(running.cpu().numpy().copy())
    return snapshots, n_off


def _unit_rows(block: torch.Tensor, rows: np.ndarray, source: str | Path) -> tuple[torch.Tensor, int]:
    """Normalise the rows off unit norm (see recognition_eval.inputs); refuse NaN/inf and zero-norm rows."""
    finite = torch.isfinite(block).all(dim=1)
    if not bool(finite.all()):
        bad = rows[~finite.cpu().numpy()][:5].tolist()
        raise DataError(source, f"NaN or infinite values in rows {bad} (first 5 shown)")
    norms = torch.linalg.vector_norm(block, dim=1)
    zero = norms < 1e-12
    if bool(zero.any()):
        bad = rows[zero.cpu().numpy()][:5].tolist()
        raise DataError(source, f"zero-norm rows {bad} (first 5 shown) cannot be normalised")
    off = (norms - 1.0).abs() > NORM_TOLERANCE
    n_off = int(off.sum())
    if n_off:
        block[off] = block[off] / norms[off, None]
    return block, n_off
