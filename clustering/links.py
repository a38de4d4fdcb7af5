"""From per-node neighbour probabilities to undirected weighted links (shared by FaceT and Clusformer).

Centre i's row (its sequence, or its hop1 neighbours) gives, for each element j, p(i -> j) = P(j has
i's identity). A pair (i, j) may be scored from both sides (each in the other's row) or from one. The link rule turns the one or two
directed scores into one undirected weight:

- ``any``: the larger score (a link when either side passes tau);
- ``mutual``: the smaller score, and no link unless both sides scored the pair;
- ``average``: the mean of both sides, a side that did not score the pair counting as 0 (the pair was
  not even among that sample's k nearest neighbours).
"""

from __future__ import annotations

import numpy as np

from clustering.node_ids import id_dtype
from clustering.partition import link_confidence
from semiface.errors import ConfigError, DataError

LINK_RULES = ("any", "mutual", "average")
ROW_CHUNK = 32_768  # centre rows per step of ``undirected_links``
LOOKUP_CHUNK = 262_144  # sides per reverse lookup (a block gathers LOOKUP_CHUNK rows of ids)
# A side counts as strong from this far under the floor: a float32 mean of two sides just under the
# floor can round up onto it, and a strong side too many only costs a lookup (the floor is applied exactly after).
_STRONG_SLACK = 1e-6


def directed_edges(ids: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (centre, element, probability) of the sequences, the centre's own position and padding left out."""
    k = ids.shape[1]
    src = np.repeat(ids[:, 0], k - 1)
    dst = ids[:, 1:].reshape(-1)
    p = probs[:, 1:].reshape(-1)
    keep = (dst >= 0) & (dst != src)
    return src[keep], dst[keep], p[keep]


def undirected_links(
    n: int, ids: np.ndarray, probs: np.ndarray, rule: str = "average", floor: float | None = None,
    within: np.ndarray | None = None, *, logits: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected links ``src < dst`` (ids as ``id_dtype(n)``, sorted by pair) with their float32
    weight under ``rule``; links below ``floor`` dropped.

    Row i of ``ids`` [n, L] is centre i followed by the elements it scored (-1 = padding; each
    element listed once), ``probs`` [n, L] their probabilities. Under every rule a link of weight
    >= ``floor`` > 0 has a side scored >= ``floor`` (``any``: its larger side; ``mutual``: both;
    ``average``: (a + b) / 2 >= floor needs max(a, b) >= floor). So the rows are read chunk by
    chunk, only those strong sides are kept, each looks its reverse score up in the other node's
    row, and the rule and the floor are applied exactly to the pair: memory holds the strong sides,
    never every directed score (at paper scale 5.21M x 150). ``floor`` None (or <= 0) keeps every pair.
    ``within`` (labels, -1 = none): only pairs inside one labelled group.

    ``logits``: ``probs`` and ``floor`` are log-odds (-inf = probability 0), and so are the weights;
    ``average`` is then the log-odds of the mean probability, computed without leaving log space (the
    strong-side argument holds unchanged: the log-odds are monotone in the probability).
    """
    if rule not in LINK_RULES:
        raise ConfigError(f"link_rule must be one of {', '.join(LINK_RULES)}, got {rule!r}")
    if ids.shape != probs.shape or ids.ndim != 2 or len(ids) != n:
        raise DataError("links", f"ids {ids.shape} and probs {probs.shape} must both be [{n}, L]")
    dtype = id_dtype(n)
    empty = -np.inf if logits else 0.0  # the score of a side that did not score the pair
    if floor is None:
        floor = empty
    strong = floor - max(_STRONG_SLACK, abs(floor) * _STRONG_SLACK) if floor > empty else -np.inf
    parts = []
    for start in range(0, n, ROW_CHUNK):
        centre, other, score = directed_edges(ids[start : start + ROW_CHUNK], probs[start : start + ROW_CHUNK])
        keep = score >= strong
        if within is not None:
            keep &= (within[centre] == within[other]) & (within[centre] >= 0)
        centre, other, score = centre[keep].astype(dtype), other[keep].astype(dtype), score[keep].astype(np.float32)
        reverse, found = _reverse_scores(ids, probs, centre, other, empty)
        # a pair strong from both sides is taken from the row of its smaller node only
        twice = found & (reverse >= strong) & (other < centre)
        weight = _combine(rule, score, reverse, found, logits)
        keep = ~twice & (weight >= floor)
        if rule == "mutual":
            keep &= found
        lo, hi = np.minimum(centre, other)[keep], np.maximum(centre, other)[keep]
        parts.append((lo, hi, weight[keep]))
    if not parts:
        return np.empty(0, dtype), np.empty(0, dtype), np.empty(0, np.float32)
    lo, hi, weight = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.argsort(lo.astype(np.int64) * n + hi, kind="stable")
    return lo[order], hi[order], weight[order]


def _reverse_scores(
    ids: np.ndarray, probs: np.ndarray, centre: np.ndarray, other: np.ndarray, empty: float
) -> tuple[np.ndarray, np.ndarray]:
    """p(other -> centre) float32 (``empty`` where ``other``'s row does not list ``centre``) and whether it
    lists it (vectorised, in blocks of ``LOOKUP_CHUNK`` sides: each gathers the other node's row)."""
    reverse = np.full(len(centre), empty, dtype=np.float32)
    found = np.zeros(len(centre), dtype=bool)
    for start in range(0, len(centre), LOOKUP_CHUNK):
        block = slice(start, start + LOOKUP_CHUNK)
        hit = ids[other[block], 1:] == centre[block, None]
        found[block] = hit.any(axis=1)
        column = hit.argmax(axis=1) + 1
        reverse[block] = np.where(found[block], probs[other[block], column], empty)
    return reverse, found


def _combine(rule: str, score: np.ndarray, reverse: np.ndarray, found: np.ndarray, logits: bool) -> np.ndarray:
    """The undirected weight of each pair from its side ``score`` and the ``reverse`` side (probability 0
    when not ``found``), in probabilities or, with ``logits``, in log-odds."""
    if rule == "any":
        return np.where(found, np.maximum(score, reverse), score)
    if rule == "mutual":
        return np.minimum(score, reverse)
    if logits:
        return _mean_probability_log_odds(score, reverse).astype(np.float32)
    return (score + reverse) / np.float32(2.0)


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _mean_probability_log_odds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log-odds of (sigmoid(a) + sigmoid(b)) / 2, stable for any log-odds (b = -inf: a side not scored)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.logaddexp(_log_sigmoid(a), _log_sigmoid(b)) - np.logaddexp(_log_sigmoid(-a), _log_sigmoid(-b))


def cluster_confidence(labels: np.ndarray, ids: np.ndarray, scores: np.ndarray, rule: str, *, logits: bool) -> np.ndarray:
    """Per-sample confidence float32 [N]: the mean probability, under ``rule``, of every pair scored
    inside the sample's own cluster, over tau or not (0 for -1, singletons and members no pair of
    their cluster was scored for). A cluster that chained two people through a few strong links holds
    many weak pairs across them, so its members score low; reading only the links the partition
    kept (all over tau) gives every clustered sample at least sigmoid(tau), and a filter on it
    drops nothing but singletons."""
    labels = np.asarray(labels)
    src, dst, weight = undirected_links(len(labels), ids, scores, rule, within=labels, logits=logits)
    probability = 1.0 / (1.0 + np.exp(-weight.astype(np.float64))) if logits else weight.astype(np.float64)
    return link_confidence(labels, src, dst, probability)
