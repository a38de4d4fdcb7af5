"""Partition a weighted link graph into clusters: union-find over links above tau, or Infomap.

The learned methods (FaceT, Clusformer) predict a link probability per kNN edge and call
``partition_links``; ``link_confidence`` turns the same links into a per-sample confidence.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from clustering.union_find import connected_components, drop_small
from semiface.errors import ConfigError, DataError, reject_unknown

PARTITION_METHODS = ("union_find", "infomap")
INFOMAP_PARAMS = frozenset({"num_trials", "weight_power", "markov_time", "max_links_per_node", "memory_budget"})
# Each node keeps at most its this many strongest links (a link stays when it is among the strongest
# of either end): at most N x this many links reach Infomap however dense the graph above tau.
MAX_LINKS_PER_NODE = 100
# Infomap's own memory, fitted to its peak resident memory (bench/cluster_scaling.py, infomap_memory
# case): bytes per node and per link, the latter with the float64 (source, target, weight) array
# handed to it. An estimate over ``memory_budget`` is refused before Infomap starts.
INFOMAP_NODE_BYTES = 1_400
INFOMAP_LINK_BYTES = 90
INFOMAP_BUDGET_ENV = "SEMIFACE_INFOMAP_MEMORY_GB"
DEFAULT_INFOMAP_BUDGET = 16 * 2**30
# How Infomap weighs a link of a learned model: its probability p, its odds p / (1 - p), or the square
# root of the odds. Learned link probabilities crowd near 1, where p itself barely tells a sure link
# from a doubtful one; the odds keep that order as weight, but let the surest links hold most of the
# flow. Measured with FaceT + Infomap (docs/experiments/clustering.md, "Clustering on real faces"): the odds gave +0.8 points of
# pairwise F on average over three draws of the generated features but 3 to 7 points less on the real
# faces' dlib descriptors; their square root keeps most of the gain on generated features and loses
# about 1 point on real ones.
LINK_WEIGHTS = ("probability", "odds", "sqrt_odds")
# Odds grow with the log-odds beyond that of p = 0.9999 instead of exponentially: a few links hundreds
# of times heavier than the rest would hold all of Infomap's flow, yet a hard cap would give every
# p >= 0.9999 (45 % of FaceT's links on generated features) one and the same weight.
ODDS_CAP = 1e4
# Log-odds of a float32 probability of 1.0: its gap below 1 is 2^-24 (the most a probability can say).
_SATURATED_LOG_ODDS = float(np.log((1.0 - 2.0**-24) / 2.0**-24))


def partition_links(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    *,
    method: str = "union_find",
    tau: float = 0.5,
    max_size: int | None = None,
    min_size: int = 1,
    seed: int = 0,
    link_weight: str = "probability",
    logits: bool = False,
    **method_params: object,
) -> np.ndarray:
    """Cluster ids int64 [n] (-1 for clusters under ``min_size``) from links ``src``-``dst`` of ``weight``.

    Only links with weight > ``tau`` are used. ``union_find``: connected components, where with
    ``max_size`` links are added by decreasing weight and merges past the cap are refused.
    ``infomap``: see ``infomap_partition`` (``method_params``: ``num_trials``, ``weight_power``,
    ``markov_time``), fed the weights as they are or (``link_weight``, weights in [0, 1]) as their
    odds (``capped_odds``) or the odds' square root; modules over ``max_size`` are split by the capped
    union-find over their own links. Union-find reads only the order of the weights, which the
    odds keep, so ``link_weight`` does not change it. ``logits``: ``weight`` and ``tau`` are the
    log-odds of learned links (which do not saturate as float32 probabilities do near 1).
    """
    if link_weight not in LINK_WEIGHTS:
        raise ConfigError(f"partition_links: link_weight must be one of {', '.join(LINK_WEIGHTS)}, got {link_weight!r}")
    weight = np.asarray(weight).reshape(-1)
    if len(weight) != len(np.asarray(src).reshape(-1)):
        raise DataError("links", f"{len(weight)} weights for {len(np.asarray(src).reshape(-1))} links")
    keep = weight > tau
    src, dst, weight = np.asarray(src).reshape(-1)[keep], np.asarray(dst).reshape(-1)[keep], weight[keep]
    if method == "union_find":
        reject_unknown(method_params, set(), "partition_links(method='union_find')")
        return connected_components(n, src, dst, weight=weight, max_size=max_size, min_size=min_size)
    if method == "infomap":
        reject_unknown(method_params, INFOMAP_PARAMS, "partition_links(method='infomap')")
        flow = link_flow(weight, link_weight, logits=logits)
        labels = infomap_partition(n, src, dst, flow, seed=seed, **method_params)  # type: ignore[arg-type]
        if max_size is not None:
            labels = _split_oversized(labels, src, dst, weight, max_size)
        return drop_small(labels, min_size)
    raise ConfigError(f"partition_links: unknown method {method!r}; available: {', '.join(PARTITION_METHODS)}")


@dataclass(frozen=True)
class InfomapSearch:
    """How Infomap partitions learned links (``infomap_partition``): ``trials`` searches, the one of least
    code length kept; ``markov_time`` > 1 favours fewer, larger modules."""

    trials: int = 1
    markov_time: float = 1.0

    def __post_init__(self) -> None:
        if self.trials < 1 or not self.markov_time > 0:
            raise ConfigError(f"infomap_trials must be >= 1 and infomap_markov_time > 0, got {self.trials} and "
                              f"{self.markov_time}")

    def params(self, method: str) -> dict[str, float]:
        """``partition_links`` keywords of this search for ``method``: none for union-find, which has no search."""
        return {"num_trials": self.trials, "markov_time": self.markov_time} if method == "infomap" else {}


ONE_SEARCH = InfomapSearch()  # Infomap's own defaults: one search, Markov time 1


def infomap_search(settings: object, final: bool = True) -> InfomapSearch:
    """The search of a learned-link method's ``settings`` (its ``infomap_trials`` and ``infomap_markov_time``):
    with its trials where tau is tuned after training and where a set is clustered (``final``), or once (an
    epoch's quick score). Refuses trials under 1 and a Markov time <= 0."""
    return InfomapSearch(settings.infomap_trials if final else 1, settings.infomap_markov_time)  # type: ignore[attr-defined]


def link_flow(weight: np.ndarray, link_weight: str, *, logits: bool = False) -> np.ndarray:
    """What Infomap is given for links of ``weight`` (probabilities, or log-odds with ``logits``): see ``LINK_WEIGHTS``."""
    if link_weight == "probability":
        return 1.0 / (1.0 + np.exp(-np.asarray(weight, dtype=np.float64))) if logits else weight
    odds = capped_odds(np.asarray(weight, dtype=np.float64) if logits else _log_odds(weight))
    return odds if link_weight == "odds" else np.sqrt(odds)


def capped_odds(log_odds: np.ndarray) -> np.ndarray:
    """exp(log_odds) up to ``ODDS_CAP``, then ODDS_CAP * (1 + log_odds - log ODDS_CAP): float64, strictly
    increasing and continuous with its slope, so links past the cap keep their order but not a runaway weight."""
    log_odds = np.asarray(log_odds, dtype=np.float64)
    knee = np.log(ODDS_CAP)
    return np.where(log_odds <= knee, np.exp(np.minimum(log_odds, knee)), ODDS_CAP * (1.0 + log_odds - knee))


def _log_odds(probability: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities in [0, 1]; a probability of 1 counts as 1 - 2^-24 (float32's last step)."""
    probability = np.asarray(probability, dtype=np.float64)
    if len(probability) and (probability.min() < 0 or probability.max() > 1):
        raise DataError("links", f"odds need probabilities in [0, 1]; weights span "
                                 f"[{probability.min():.4g}, {probability.max():.4g}]")
    with np.errstate(divide="ignore"):
        return np.minimum(np.log(probability) - np.log1p(-probability), _SATURATED_LOG_ODDS)


def infomap_partition(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    *,
    seed: int = 0,
    num_trials: int = 1,
    weight_power: float = 1.0,
    markov_time: float = 1.0,
    max_links_per_node: int | None = MAX_LINKS_PER_NODE,
    memory_budget: int | None = None,
) -> np.ndarray:
    """Two-level Infomap modules (int64 [n], contiguous from 0 by smallest member) of an undirected weighted graph.

    Link weight = max(weight, 0) ** ``weight_power`` (a power > 1 favours the strongest links);
    links listed in both directions add up. Self-links and zero-weight links are dropped; nodes
    with no link are singletons. ``seed`` makes the result reproducible; ``num_trials`` keeps the
    best of several searches; ``markov_time`` > 1 gives fewer, larger modules.
    ``max_links_per_node`` (None: no cap) keeps only links among the strongest of either end
    (``cap_links_per_node``). The links reach Infomap as one array (infomap >= 2.11 reads it in
    C++, no loop per link); a request whose estimated memory (``infomap_memory``) exceeds
    ``memory_budget`` bytes (None: ``$SEMIFACE_INFOMAP_MEMORY_GB``, else 16 GiB) is refused with a
    ConfigError naming the numbers.
    """
    import infomap

    if num_trials < 1 or weight_power <= 0 or markov_time <= 0:
        raise ConfigError(
            f"infomap: num_trials must be >= 1 and weight_power, markov_time > 0 "
            f"(got {num_trials}, {weight_power}, {markov_time})"
        )
    if max_links_per_node is not None and max_links_per_node < 1:
        raise ConfigError(f"infomap: max_links_per_node must be >= 1 or None, got {max_links_per_node}")
    src, dst = np.asarray(src).reshape(-1), np.asarray(dst).reshape(-1)
    weight = np.maximum(np.asarray(weight, dtype=np.float64).reshape(-1), 0.0) ** weight_power
    keep = (src != dst) & (weight > 0)
    if max_links_per_node is not None:
        keep[keep] = cap_links_per_node(n, src[keep], dst[keep], weight[keep], max_links_per_node)
    if not keep.any():
        return np.arange(n, dtype=np.int64)
    _check_budget(n, int(keep.sum()), max_links_per_node, memory_budget)
    # seed + 1: Infomap's seeds start at 1
    engine = infomap.Infomap(two_level=True, silent=True, seed=seed + 1, num_trials=num_trials, markov_time=markov_time)
    if not _reads_arrays(engine):
        raise ConfigError(f"infomap {infomap.__version__} copies links one by one into Python lists: "
                          "install infomap >= 2.11 (pip install 'infomap>=2.11,<3'), whose add_links reads a NumPy array in C++")
    engine.add_nodes(range(n))
    engine.add_links(np.column_stack([src[keep], dst[keep], weight[keep]]))
    engine.run()
    # The legacy get_modules (deprecated in infomap 2.16, present from 2.x on) rather than
    # Result.modules(): the latter iterates SWIG vectors and segfaults when infomap was imported
    # before faiss (the two SWIG modules share iterator types).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        modules = engine.get_modules()
    labels = np.empty(n, dtype=np.int64)
    labels[np.fromiter(modules.keys(), np.int64, len(modules))] = np.fromiter(modules.values(), np.int64, len(modules))
    return drop_small(labels, 1)


def cap_links_per_node(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, cap: int) -> np.ndarray:
    """Mask of the links among the ``cap`` strongest of their source or of their target (ties: the
    earlier link), so no more than ``n`` x ``cap`` links are kept; vectorised (two sorts)."""
    count = len(src)
    ends = np.concatenate([src, dst])
    order = np.lexsort((np.arange(2 * count), -np.concatenate([weight, weight]), ends))  # by node, strongest first
    sorted_ends = ends[order]
    first = np.searchsorted(sorted_ends, np.arange(n))  # where each node's run starts
    rank = np.arange(2 * count) - first[sorted_ends]
    kept = np.zeros(count, dtype=bool)
    kept[order[rank < cap] % count] = True
    return kept


def infomap_memory(n: int, links: int) -> int:
    """Estimated peak bytes of Infomap on ``n`` nodes and ``links`` links (``INFOMAP_*_BYTES``)."""
    return n * INFOMAP_NODE_BYTES + links * INFOMAP_LINK_BYTES


def _check_budget(n: int, links: int, cap: int | None, budget: int | None) -> None:
    if budget is None:
        setting = os.environ.get(INFOMAP_BUDGET_ENV)
        budget = int(float(setting) * 2**30) if setting else DEFAULT_INFOMAP_BUDGET
    needed = infomap_memory(n, links)
    if needed > budget:
        raise ConfigError(
            f"infomap: {links:,} links over {n:,} nodes need about {needed / 2**30:.1f} GiB "
            f"({INFOMAP_NODE_BYTES} bytes a node + {INFOMAP_LINK_BYTES} a link), over the memory budget of "
            f"{budget / 2**30:.1f} GiB. Raise the budget ({INFOMAP_BUDGET_ENV}=<GiB> in the environment, or "
            f"memory_budget=<bytes>), or pass fewer links: a higher tau / min_sim, or a lower max_links_per_node "
            f"(now {cap}), or partition with union_find."
        )


def _reads_arrays(engine) -> bool:
    """Whether this infomap takes a NumPy link array in C++ (``addLinksFromNumpy2D``, infomap >= 2.11)."""
    return hasattr(engine, "addLinksFromNumpy2D") or hasattr(getattr(engine, "_core", None), "addLinksFromNumpy2D")


def _split_oversized(labels: np.ndarray, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, max_size: int) -> np.ndarray:
    """Re-cluster modules larger than ``max_size`` with the size-capped union-find over their internal links."""
    sizes = np.bincount(labels)
    big = sizes[labels] > max_size
    if not big.any():
        return labels
    inside = big[src] & (labels[src] == labels[dst])
    pieces = connected_components(len(labels), src[inside], dst[inside], weight=weight[inside], max_size=max_size)
    out = labels.copy()
    out[big] = labels.max() + 1 + pieces[big]
    return drop_small(out, 1)


def link_confidence(labels: np.ndarray, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-sample mean weight of its links (either end) inside its own cluster: float32 [N].

    Samples with label -1, singletons and samples with no link inside their cluster get 0.
    """
    labels = np.asarray(labels)
    src, dst = np.asarray(src).reshape(-1), np.asarray(dst).reshape(-1)
    weight = np.asarray(weight, dtype=np.float64).reshape(-1)
    if not len(src) == len(dst) == len(weight):
        raise DataError("links", f"edge arrays differ in length (src {len(src)}, dst {len(dst)}, weight {len(weight)})")
    inside = (labels[src] == labels[dst]) & (labels[src] >= 0) & (src != dst)
    ends = np.concatenate([src[inside], dst[inside]])
    total = np.bincount(ends, weights=np.tile(weight[inside], 2), minlength=len(labels))
    count = np.bincount(ends, minlength=len(labels))
    return np.divide(total, count, out=np.zeros(len(labels)), where=count > 0).astype(np.float32)
