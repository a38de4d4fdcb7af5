"""MegaFace Challenge 1 identification on any probe/distractor split: rank-1 and CMC vs distractor-set size.

For each probe identity with n images and each ordered pair (p, g), p != g, g is put in a gallery of D
distractors as the only image of its identity and p searches it. Tie rule (``TIE_RULE``): a distractor
scoring exactly sim(p, g) counts against the probe, so (p, g) is a rank-r hit when fewer than r
distractors score >= sim(p, g). Rank-r = hits / sum n(n - 1).

Distractor sets of sizes 10, 100, ..., 1M are prefixes of one seeded permutation of the distractors,
so they are nested (the 100 contain the 10) and fixed for a seed; sizes above what exists are capped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recognition_eval.inputs import ProbeSet, check_distractors, prepare_probes, warn_renormalised
from recognition_eval.scan import DEFAULT_MAX_BYTES, ProgressReport, Scores, score_probes
from semiface.devices import resolve_device
from semiface.errors import ConfigError

DEFAULT_SIZES = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
DEFAULT_MAX_RANK = 10
TIE_RULE = (
    "ties count against the probe: (p, g) is a rank-r hit when fewer than r distractors score >= sim(p, g)"
)
_PAIRS_PER_BLOCK = 1 << 20


@dataclass(frozen=True)
class IdentificationResult:
    """Rank-1 and CMC per distractor-set size, with what was evaluated and what was left out."""

    sizes: tuple[int, ...]  # distractor-set sizes actually used, ascending
    requested_sizes: tuple[int, ...]
    rank1: np.ndarray  # float64 [len(sizes)]
    cmc: np.ndarray  # float64 [len(sizes), max_rank]; cmc[i, r - 1] = rank-r rate with sizes[i] distractors
    n_pairs: int  # sum n(n - 1) over the kept probe identities
    n_probe_images: int
    n_probe_identities: int
    left_out_identities: tuple[str, ...]  # single-image probe identities (no pair)
    n_left_out_images: int
    n_distractors_available: int
    seed: int
    tie_rule: str = TIE_RULE

    @property
    def max_rank(self) -> int:
        return self.cmc.shape[1]

    def rank(self, r: int, size: int | None = None) -> float:
        """Rank-r identification rate at distractor-set ``size`` (default: the largest used)."""
        if not 1 <= r <= self.max_rank:
            raise ConfigError(f"rank: r={r} outside 1..{self.max_rank} (raise max_rank to get it)")
        size = self.sizes[-1] if size is None else size
        if size not in self.sizes:
            raise ConfigError(f"rank: size {size} was not evaluated; sizes are {list(self.sizes)}")
        return float(self.cmc[self.sizes.index(size), r - 1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "sizes": list(self.sizes),
            "requested_sizes": list(self.requested_sizes),
            "rank1": self.rank1.tolist(),
            "cmc": self.cmc.tolist(),
            "max_rank": self.max_rank,
            "n_pairs": self.n_pairs,
            "n_probe_images": self.n_probe_images,
            "n_probe_identities": self.n_probe_identities,
            "left_out_identities": list(self.left_out_identities),
            "n_left_out_images": self.n_left_out_images,
            "n_distractors_available": self.n_distractors_available,
            "seed": self.seed,
            "tie_rule": self.tie_rule,
        }


def used_sizes(requested: Sequence[int], available: int) -> tuple[int, ...]:
    """Ascending distinct sizes, each capped at ``available``."""
    sizes = [int(s) for s in requested]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"sizes: expected one or more positive distractor-set sizes, got {list(requested)}")
    return tuple(sorted({min(s, available) for s in sizes}))


def distractor_order(n: int, seed: int) -> np.ndarray:
    """The seeded permutation of ``n`` distractors whose prefixes are the distractor sets."""
    return np.random.default_rng(seed).permutation(n)


def distractor_subsets(n: int, sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each distractor set (nested, capped at ``n``), as identification uses them."""
    order = distractor_order(n, seed)
    return [order[:size] for size in used_sizes(sizes, n)]


def cmc_from_top_scores(
    top_scores: np.ndarray, pair_probe: np.ndarray, pair_score: np.ndarray, max_rank: int
) -> np.ndarray:
    """CMC [max_rank] from each probe's ``max_rank`` best distractor scores (descending, -inf padded).

    The number of distractors >= sim(p, g), capped at max_rank, is the number of p's top scores >= it.
    """
    hits = np.zeros(max_rank + 1, dtype=np.int64)
    for start in range(0, len(pair_score), _PAIRS_PER_BLOCK):
        block = slice(start, start + _PAIRS_PER_BLOCK)
        above = (top_scores[pair_probe[block]] >= pair_score[block, None]).sum(axis=1)
        hits += np.bincount(above, minlength=max_rank + 1)
    return np.cumsum(hits[:max_rank]) / len(pair_score)


def build_identification(
    probes: ProbeSet,
    scores: Scores,
    *,
    requested_sizes: Sequence[int],
    n_distractors: int,
    max_rank: int,
    seed: int,
) -> IdentificationResult:
    """Turn the scan's top scores and genuine pairs into an IdentificationResult."""
    cmc = np.stack(
        [cmc_from_top_scores(t, scores.pair_probe, scores.pair_score, max_rank) for t in scores.top_scores]
    )
    return IdentificationResult(
        sizes=scores.sizes,
        requested_sizes=tuple(int(s) for s in requested_sizes),
        rank1=cmc[:, 0].copy(),
        cmc=cmc,
        n_pairs=len(scores.pair_score),
        n_probe_images=len(probes.features),
        n_probe_identities=probes.n_identities,
        left_out_identities=probes.left_out_identities,
        n_left_out_images=probes.n_left_out_images,
        n_distractors_available=n_distractors,
        seed=seed,
    )


def check_max_rank(max_rank: int) -> int:
    if int(max_rank) < 1:
        raise ConfigError(f"max_rank: expected a positive rank, got {max_rank}")
    return int(max_rank)


def identification_cmc(
    probe_features: np.ndarray,
    probe_identities: Sequence | np.ndarray,
    distractor_features: np.ndarray,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    max_rank: int = DEFAULT_MAX_RANK,
    seed: int = 0,
    device: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: ProgressReport = False,
) -> IdentificationResult:
    """MegaFace identification: rank-1..max_rank per distractor-set size (see the module docstring).

    ``distractor_features`` may be a memory map; it is read in blocks of at most ``max_bytes`` of
    working memory ([probes x block] scores), on CUDA when ``device`` resolves to it.
    """
    max_rank = check_max_rank(max_rank)
    probes = prepare_probes(probe_features, probe_identities)
    check_distractors(
        distractor_features, len(distractor_features), probes.features.shape[1], "distractor features"
    )
    sizes_used = used_sizes(sizes, len(distractor_features))
    scores = score_probes(
        probes,
        distractor_features,
        distractor_order(len(distractor_features), seed),
        sizes_used,
        top_k=max_rank,
        verification=False,
        device=resolve_device(device),
        max_bytes=max_bytes,
        progress=progress,
    )
    warn_renormalised(scores.n_renormalised_distractors, sizes_used[-1], "distractor features")
    return build_identification(
        probes,
        scores,
        requested_sizes=sizes,
        n_distractors=len(distractor_features),
        max_rank=max_rank,
        seed=seed,
    )
