"""``link_stack``: several learned link models scoring the same kNN pairs, combined by a logistic
regression, then partitioned like any learned linkage.

Each member (FaceT, Clusformer, ``pair_gbdt``: anything with ``directed_links``) is fitted with the
stack's ``val_fraction`` and ``seed``, so all of them hold out the same labelled identities. The
combination is fitted on the links between those held-out rows (people no member trained on), with
each member's log-odds as one input: its output is calibrated log-odds that weigh each member by
what it adds on unseen people. Tau and the link rule are then tuned on the tune slice as for every
learned method (``clustering.link_tuning``). A pair is scored only where every member scored it
(the members read the same k nearest neighbours, so nearly every pair is).
"""

from __future__ import annotations

import copy
import logging
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clustering.base import Clusterer, make_method, register
from clustering.identities import TUNE_SAMPLES, split_by_identity, tuning_slices
from clustering.knn import KnnGraph, build_knn
from clustering.link_tuning import RULE_CHOICES, TUNED_RULE, log_odds, rules_to_try, tune_links
from clustering.links import cluster_confidence, directed_edges, undirected_links
from clustering.partition import LINK_WEIGHTS, PARTITION_METHODS, infomap_search, partition_links
from semiface.atomic import atomic_path
from semiface.errors import ConfigError, DataError
from semiface.features import check_features

log = logging.getLogger(__name__)

FORMAT = "semiface-link-stack/1"
_CLIP = 50.0  # members' log-odds are clipped to +-50 before they are combined (the solver needs finite inputs)
_SHARED = ("val_fraction", "seed")  # set by the stack on every member: the same held-out identities
# Settings ``retuned`` may change: how the stacked links are cut and partitioned, not the members.
AFTER_TRAINING = frozenset({"tau", "tune_samples", "tune_on", "partition", "link_rule", "infomap_weight",
                            "infomap_trials", "infomap_markov_time", "max_size", "min_size"})


@register("link_stack")
class LinkStack(Clusterer):
    """Members' link log-odds combined by logistic regression on held-out identities' links.

    ``members``: (method name, parameters) pairs, e.g. ``[("facet", {"preset": "demo"}), ("pair_gbdt", {})]``.
    ``k``: neighbours (self included) of the graphs the stack builds when none is given. The other
    parameters are those of every learned linkage (``tau`` a probability; ``tau_`` the tuned log-odds).
    """

    name = "link_stack"
    needs_training = True

    def __init__(
        self, members: Sequence[Sequence[Any]] = (("facet", {"preset": "demo"}), ("pair_gbdt", {})), *, k: int = 30,
        val_fraction: float = 0.2, tune_samples: int = TUNE_SAMPLES, tune_on: str = "all", partition: str = "union_find",
        link_rule: str = TUNED_RULE, infomap_weight: str = "probability", infomap_trials: int = 1,
        infomap_markov_time: float = 1.0, tau: float | None = None, max_size: int | None = None, min_size: int = 1,
        seed: int = 0,
    ) -> None:
        if len(members) < 2:
            raise ConfigError(f"link_stack: give at least two members, got {len(members)}")
        self.members = [(str(name), dict(params)) for name, params in members]
        for name, params in self.members:
            clash = sorted(p for p in _SHARED if p in params)
            if clash or "+" in name:
                raise ConfigError(f"link_stack: member {name!r} sets {', '.join(clash) or 'a partition'}: the stack sets "
                                  f"{', '.join(_SHARED)} for every member and partitions the stacked links itself")
        checks = {"partition": PARTITION_METHODS, "link_rule": RULE_CHOICES, "infomap_weight": LINK_WEIGHTS,
                  "tune_on": ("heldout", "all")}
        for field, allowed in checks.items():
            if locals()[field] not in allowed:
                raise ConfigError(f"link_stack: {field} must be one of {', '.join(allowed)}, got {locals()[field]!r}")
        if not 0.0 < val_fraction < 1.0 or k < 2 or tune_samples < 1:
            raise ConfigError(f"link_stack: val_fraction in (0, 1), k >= 2 and tune_samples >= 1, got {val_fraction}, "
                              f"{k}, {tune_samples}")
        if tau is not None and not 0.0 <= tau < 1.0:
            raise ConfigError(f"link_stack: tau must be a probability in [0, 1) or None, got {tau}")
        self.k, self.val_fraction, self.tune_samples, self.tune_on = k, val_fraction, tune_samples, tune_on
        self.partition, self.link_rule, self.infomap_weight, self.tau = partition, link_rule, infomap_weight, tau
        self.infomap_trials, self.infomap_markov_time = infomap_trials, infomap_markov_time
        infomap_search(self)  # refuses trials under 1 and a Markov time <= 0
        self.max_size, self.min_size, self.seed = max_size, min_size, seed
        self.fitted_: list[Clusterer] = []
        self.weights_: np.ndarray | None = None  # logistic regression: one weight per member, then the intercept
        self.tau_: float | None = None
        self.link_rule_: str | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None) -> LinkStack:
        """Fit every member, the combination on the held-out identities' links, then tau and the rule."""
        check_features(features, "labelled features")
        labels = np.asarray(labels)
        if labels.shape != (len(features),):
            raise DataError("labels", f"expected {len(features)} labels for the labelled features, got shape {labels.shape}")
        shared = {"val_fraction": self.val_fraction, "seed": self.seed}
        self.fitted_ = [make_method(name, **params, **shared).fit(features, labels, knn) for name, params in self.members]
        _, val_rows = split_by_identity(labels, self.val_fraction, self.seed)
        heldout, rows, _ = tuning_slices(labels, val_rows, self.tune_samples, self.tune_samples, self.seed)
        ids, scores = self._member_scores(features[rows], None)
        self.weights_ = _fit_combination(ids, scores, labels[rows], heldout[rows])
        log.info("link_stack: member weights %s, intercept %.3f", np.round(self.weights_[:-1], 3), self.weights_[-1])
        self._tune(ids, self._combine(scores), labels[rows], heldout[rows])
        return self

    def retuned(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, **changes: object) -> LinkStack:
        """A copy sharing the fitted members and combination, with ``AFTER_TRAINING`` settings changed and
        tau (and the rule) tuned again on the slice ``fit`` tuned on (pass the same labelled data)."""
        if self.weights_ is None:
            raise ConfigError("link_stack: call fit on labelled features first")
        refused = sorted(set(changes) - AFTER_TRAINING)
        if refused:
            raise ConfigError(f"link_stack: {', '.join(refused)} change the members: fit a new stack instead "
                              f"(retuned takes {', '.join(sorted(AFTER_TRAINING))})")
        clone = copy.copy(self)
        for name, value in changes.items():
            setattr(clone, name, value)
        labels = np.asarray(labels)
        _, val_rows = split_by_identity(labels, clone.val_fraction, clone.seed)
        heldout, rows, _ = tuning_slices(labels, val_rows, clone.tune_samples, clone.tune_samples, clone.seed)
        ids, scores = clone._member_scores(features[rows], None)
        clone._tune(ids, clone._combine(scores), labels[rows], heldout[rows])
        return clone

    def _tune(self, ids: np.ndarray, stacked: np.ndarray, labels: np.ndarray, heldout: np.ndarray) -> None:
        tuning = tune_links(labels, heldout, ids, stacked, rules_to_try(self.link_rule, True),
                            None if self.tau is None else [log_odds(self.tau)], tune_on=self.tune_on,
                            partition=self.partition, max_size=self.max_size, seed=self.seed,
                            link_weight=self.infomap_weight, infomap=infomap_search(self), name="link_stack")
        self.tau_ = tuning.tau
        self.link_rule_ = tuning.rule if self.link_rule == TUNED_RULE else None

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        if self.weights_ is None or self.tau_ is None:
            raise ConfigError("link_stack: call fit on labelled features first")
        ids, scores = self._member_scores(features, knn)
        rule = self.link_rule_ or self.link_rule
        tau = self.tau_ if self.tau is None else log_odds(self.tau)
        n = len(features)
        combined = self._combine(scores)
        src, dst, weight = undirected_links(n, ids, combined, rule, tau, logits=True)
        labels = partition_links(n, src, dst, weight, method=self.partition, tau=tau, max_size=self.max_size,
                                 min_size=self.min_size, seed=self.seed, link_weight=self.infomap_weight, logits=True,
                                 **infomap_search(self).params(self.partition))
        self.confidence_ = cluster_confidence(labels, ids, combined, rule, logits=True)
        return labels

    def save(self, path: str | Path) -> Path:
        """One file: every member saved by its own ``save``, the combination, tau and the rule (pickled:
        load only files this project wrote)."""
        if self.weights_ is None:
            raise ConfigError("link_stack: nothing to save before fit")
        members = []
        with tempfile.TemporaryDirectory(prefix="link-stack-") as tmp:
            for i, ((name, _), member) in enumerate(zip(self.members, self.fitted_, strict=True)):
                members.append((name, member.save(Path(tmp) / f"member{i}").read_bytes()))
        state = {key: getattr(self, key) for key in ("members", "k", "val_fraction", "tune_samples", "tune_on",
                                                     "partition", "link_rule", "infomap_weight", "infomap_trials",
                                                     "infomap_markov_time", "tau", "max_size", "min_size", "seed")}
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(pickle.dumps({"format": FORMAT, "params": state, "members": members,
                                                "weights": self.weights_, "tau": self.tau_, "link_rule": self.link_rule_}))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LinkStack:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "link_stack model file not found")
        try:
            payload = pickle.loads(path.read_bytes())
        except Exception as exc:  # pickle raises many types on a foreign file
            raise DataError(path, f"not a readable link_stack model ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DataError(path, "not a link_stack model file (format tag missing)")
        params = dict(payload["params"])
        method = cls(params.pop("members"), **params)
        with tempfile.TemporaryDirectory(prefix="link-stack-") as tmp:
            for i, (name, blob) in enumerate(payload["members"]):
                (Path(tmp) / f"member{i}").write_bytes(blob)
                method.fitted_.append(type(make_method(name)).load(Path(tmp) / f"member{i}"))
        method.weights_, method.tau_, method.link_rule_ = payload["weights"], payload["tau"], payload["link_rule"]
        return method

    def _member_scores(self, features: np.ndarray, knn: KnnGraph | None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, L] of the first member's layout, scores [N, L, members]; -inf where a member did not score)."""
        if knn is None:
            knn = build_knn(features, min(self.k + 1, len(features)))
        first_ids, first = self.fitted_[0].directed_links(features, knn)
        n = len(features)
        src, dst, _ = directed_edges(first_ids, first)
        key = src * n + dst
        scores = np.full((*first_ids.shape, len(self.fitted_)), -np.inf, dtype=np.float32)
        scores[..., 0] = first
        rows, cols = np.nonzero((first_ids >= 0) & (first_ids != np.arange(n)[:, None]))
        order = np.argsort(key, kind="stable")
        for m, member in enumerate(self.fitted_[1:], start=1):
            other_ids, other = member.directed_links(features, knn)
            o_src, o_dst, o_score = directed_edges(other_ids, other)
            o_key = o_src * n + o_dst
            where = np.searchsorted(key[order], o_key)
            hit = where < len(key)
            hit[hit] = key[order][where[hit]] == o_key[hit]
            slot = order[where[hit]]
            scores[rows[slot], cols[slot], m] = o_score[hit]
        return first_ids, scores

    def _combine(self, scores: np.ndarray) -> np.ndarray:
        """The stacked log-odds [N, L]: -inf where a member is missing."""
        weights = self.weights_
        finite = np.isfinite(scores).all(-1)
        out = np.full(scores.shape[:2], -np.inf, dtype=np.float32)
        out[finite] = np.clip(scores[finite], -_CLIP, _CLIP) @ weights[:-1] + weights[-1]
        return out


def _fit_combination(ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """Logistic regression of "same identity" on the members' log-odds over the directed links between
    two held-out rows: [weight per member..., intercept]."""
    from sklearn.linear_model import LogisticRegression

    n = len(labels)
    own = np.arange(n)[:, None]
    real = (ids >= 0) & (ids != own) & np.isfinite(scores).all(-1)
    both = real & heldout[:, None] & heldout[np.where(ids >= 0, ids, 0)]
    if not both.any():
        raise DataError("labels", "link_stack: no link between two held-out labelled rows to fit the combination on")
    x = np.clip(scores[both].astype(np.float64), -_CLIP, _CLIP)
    y = labels[np.where(ids >= 0, ids, 0)][both] == np.broadcast_to(labels[:, None], ids.shape)[both]
    if y.all() or not y.any():
        raise DataError("labels", "link_stack: the held-out links are all of one kind (same or different identity)")
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    return np.r_[model.coef_[0], model.intercept_[0]]
