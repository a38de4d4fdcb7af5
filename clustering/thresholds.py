"""Threshold candidates derived from the labelled data, then refined around the best.

Embeddings put their similarities in very different ranges: ArcFace features put different people
near cosine 0, dlib's descriptors near 0.83 and the same person near 0.95. A fixed grid such as
0.3..0.9 misses the second kind entirely (every link passes, everything merges). So thresholds
(cosine floors, distance cuts, link probabilities) are searched over quantiles of the values they
cut: the labelled kNN similarities, distances or link scores. The quantiles are spaced by their
tail share (log-spaced from "keep 98 %" to "keep 0.05 %"), since the right cut on a kNN graph
usually keeps a small share of its edges; a second pass tries evenly spaced values between the
best candidate's two neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from semiface.errors import ConfigError

COARSE_COUNT = 24
REFINE_COUNT = 8
_TAIL_SHARES = (0.98, 0.0005)  # share of the values kept above the loosest and the tightest candidate


def quantile_candidates(values: np.ndarray, count: int = COARSE_COUNT, *, descending: bool = False) -> list[float]:
    """Distinct thresholds at log-spaced tail quantiles of ``values``, ascending.

    ``descending`` is for cuts that keep values *below* them (distances): the tail is the low end.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ConfigError("threshold search: no finite values to derive candidates from (empty kNN graph?)")
    if count < 2:
        raise ConfigError(f"threshold search: count must be >= 2, got {count}")
    tails = np.geomspace(*_TAIL_SHARES, count)
    levels = tails if descending else 1.0 - tails
    return sorted({float(v) for v in np.quantile(values, levels)})


def refine_candidates(tried: Sequence[float], best: float, count: int = REFINE_COUNT) -> list[float]:
    """Evenly spaced values strictly between the neighbours of ``best`` among ``tried`` (not yet tried)."""
    grid = sorted(set(float(t) for t in tried))
    at = grid.index(float(best))
    lo = grid[at - 1] if at > 0 else best
    hi = grid[at + 1] if at + 1 < len(grid) else best
    fine = np.linspace(lo, hi, count + 2)[1:-1]
    return sorted({float(v) for v in fine} - set(grid))


def two_stage_search(
    score_thresholds: Callable[[list[float]], list[dict]],
    coarse: Sequence[float],
    *,
    refine: int = REFINE_COUNT,
    key: str = "tau",
) -> tuple[float, pd.DataFrame]:
    """Best threshold by mean of pairwise and BCubed F over ``coarse``, then over a finer pass around it.

    ``score_thresholds(thresholds)`` returns one metrics dict (with ``pairwise_f``, ``bcubed_f``)
    per threshold. Ties go to the smallest threshold. Returns (best, table of every tried value
    sorted by threshold, with a ``pass`` column: coarse or fine).
    """
    coarse = sorted({float(t) for t in coarse})
    if not coarse:
        raise ConfigError("threshold search: no candidate threshold")
    rows = [{key: t, "pass": "coarse", **m} for t, m in zip(coarse, score_thresholds(coarse), strict=True)]
    best = _best(rows, key)
    fine = refine_candidates(coarse, best, refine) if refine > 0 else []
    if fine:
        rows += [{key: t, "pass": "fine", **m} for t, m in zip(fine, score_thresholds(fine), strict=True)]
        best = _best(rows, key)
    return best, pd.DataFrame(rows).sort_values(key, kind="stable").reset_index(drop=True)


def _best(rows: list[dict], key: str) -> float:
    ordered = sorted(rows, key=lambda r: r[key])
    scores = np.array([(r["pairwise_f"] + r["bcubed_f"]) / 2 for r in ordered])
    return float(ordered[int(np.argmax(scores))][key])
