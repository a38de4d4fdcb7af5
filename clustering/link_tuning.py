"""Tuning a learned linkage on labelled rows: tau, and the rule that combines a pair's two directions.

FaceT, Clusformer and ``pair_gbdt`` all score, for each node, the neighbours of its kNN row
(directed log-odds "same identity"). They tune the same way, on the same slice of labelled rows
(``clustering.identities.tuning_slices``): for each link rule to try, the directed scores become
undirected links (``clustering.links``) and tau is swept over them (``tune_link_threshold``); the
rule and tau with the best tune score are kept. Thresholds are log-odds: float32 probabilities
saturate at 1 where learned links crowd (45 % of FaceT's links on generated features), and a
threshold between them would not exist.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from clustering.links import LINK_RULES, undirected_links
from clustering.partition import ONE_SEARCH, InfomapSearch
from semiface.errors import ConfigError

log = logging.getLogger(__name__)

TUNED_RULE = "tuned"  # link_rule chosen on the labelled tune slice, like tau
EPOCH_RULE = "average"  # the rule training epochs are scored with when the rule is tuned
RULE_CHOICES = (*LINK_RULES, TUNED_RULE)


@dataclass(frozen=True)
class LinkTuning:
    """The outcome of ``tune_links``: the rule and tau (log-odds) kept, the sweep table of that rule,
    the F scores at tau (``all_*`` and ``heldout_*``) and the tune score they were chosen by."""

    rule: str
    tau: float
    table: pd.DataFrame
    scores: dict[str, float]
    tune_score: float


def rules_to_try(link_rule: str, final: bool) -> tuple[str, ...]:
    """The rules a tuning tries: ``link_rule`` itself, or with ``"tuned"`` every rule (``final``) or
    only ``EPOCH_RULE`` (an epoch's score)."""
    if link_rule not in RULE_CHOICES:
        raise ConfigError(f"link_rule must be one of {', '.join(RULE_CHOICES)}, got {link_rule!r}")
    if link_rule != TUNED_RULE:
        return (link_rule,)
    return LINK_RULES if final else (EPOCH_RULE,)


def log_odds(probability: float) -> float:
    """log(p / (1 - p)) of a probability given by a user (a tau, a grid value), for thresholds on log-odds."""
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"a link threshold given as a probability must be in [0, 1], got {probability}")
    with np.errstate(divide="ignore"):
        return float(np.log(probability) - np.log1p(-probability))


def tune_links(
    labels: np.ndarray,
    heldout: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    rules: Sequence[str],
    taus: Sequence[float] | None = None,
    *,
    tune_on: str = "all",
    partition: str = "union_find",
    max_size: int | None = None,
    seed: int = 0,
    link_weight: str = "probability",
    infomap: InfomapSearch = ONE_SEARCH,
    quick: bool = False,
    name: str = "links",
) -> LinkTuning:
    """The best (rule, tau) for directed link log-odds ``scores`` [N, K] of the rows ``ids`` [N, K]
    (column 0 the node itself) over labelled ``labels`` [N]; ``heldout`` marks the rows of identities
    not trained on. ``taus`` (log-odds) None: candidates from the link scores. Ties between rules go
    to the first of ``rules``. ``name`` prefixes the log lines."""
    from clustering.evaluate import tune_link_threshold

    if not rules:
        raise ConfigError(f"{name}: no link rule to tune")
    floor = min(taus) if taus else None
    best: LinkTuning | None = None
    for rule in rules:
        src, dst, weight = undirected_links(len(labels), ids, scores, rule, floor, logits=True)
        table, tau, tuned = tune_link_threshold(
            labels, heldout, src, dst, weight, taus, tune_on=tune_on, partition=partition, max_size=max_size,
            seed=seed, link_weight=link_weight, logits=True, quick=quick, infomap=infomap,
        )
        score = (tuned[f"{tune_on}_pairwise_f"] + tuned[f"{tune_on}_bcubed_f"]) / 2
        log.info("%s: link rule %s, tau %.4f (log-odds), tune score %.4f", name, rule, tau, score)
        if best is None or score > best.tune_score:
            best = LinkTuning(rule, float(tau), table, tuned, score)
    assert best is not None
    return best


class TunedLinks:
    """The link threshold and rule in use by a learned-link method whose ``config`` has ``tau`` (a probability,
    or None = tuned) and ``link_rule`` (or ``TUNED_RULE``): the configured ones, else those ``fit`` tuned
    (``tau_``, log-odds; ``link_rule_``)."""

    name: ClassVar[str]
    config: Any
    tau_: float | None
    link_rule_: str | None

    @property
    def tau(self) -> float:
        """The link threshold in use, as log-odds: the configured probability's, else the tuned one."""
        if self.config.tau is not None:
            return log_odds(self.config.tau)
        if self.tau_ is None:
            raise ConfigError(f"{self.name}: no tau given and none tuned: call fit() (or load a saved model) first")
        return self.tau_

    @property
    def link_rule(self) -> str:
        """The rule combining a pair's two directions: the configured one, or the tuned one."""
        if self.config.link_rule != TUNED_RULE:
            return self.config.link_rule
        if self.link_rule_ is None:
            raise ConfigError(f"{self.name}: link_rule='tuned' but no rule tuned yet: call fit() (or load a saved model) first")
        return self.link_rule_
