"""``pair_gbdt``: a reference learned linkage, gradient-boosted trees over the pair statistics of
every kNN edge (``clustering.pair_stats``), then union-find or Infomap over links above tau.

It is the simplest learned method that uses what the transformers are given as side input, and
the bar they should clear, so it is fitted and tuned exactly as they are: the trees learn from the
identities left after holding out ``val_fraction`` of them; tau (and, with ``link_rule="tuned"``,
the rule) is tuned on the same slice of whole labelled identities as FaceT's and Clusformer's
(``clustering.identities.tuning_slices``, ``clustering.link_tuning``), never on the features being
clustered. sklearn's ``HistGradientBoostingClassifier`` does the learning; its raw decision values
are the links' log-odds.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from clustering.base import Clusterer, register
from clustering.baselines import knn_graph_for
from clustering.identities import TUNE_SAMPLES, split_by_identity, tuning_slices
from clustering.knn import KnnGraph
from clustering.link_tuning import EPOCH_RULE, RULE_CHOICES, TUNED_RULE, log_odds, rules_to_try, tune_links
from clustering.links import cluster_confidence, undirected_links
from clustering.pair_stats import NeighbourhoodIndex
from clustering.partition import LINK_WEIGHTS, PARTITION_METHODS, infomap_search, partition_links
from semiface.atomic import atomic_path
from semiface.errors import ConfigError, DataError
from semiface.features import check_features

log = logging.getLogger(__name__)

FORMAT = "semiface-pair-gbdt/2"  # 2: tau_ is log-odds, the rule may be tuned
_CHUNK = 4096  # centres per statistics batch
# Settings that do not change the trees (``retuned`` may change them).
AFTER_TRAINING = frozenset({"tau", "tune_samples", "tune_on", "partition", "link_rule", "infomap_weight",
                            "infomap_trials", "infomap_markov_time", "max_size", "min_size"})


def edge_statistics(graph: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N, k]: self then the graph's neighbours, stats [N, k - 1, N_STATS] of each (node, neighbour))."""
    index = NeighbourhoodIndex.from_graph(graph)
    ids = torch.from_numpy(np.ascontiguousarray(graph.nbrs))
    sims = torch.from_numpy(np.ascontiguousarray(graph.sims))
    parts = []
    for start in range(0, graph.n, _CHUNK):
        centres = torch.arange(start, min(start + _CHUNK, graph.n))
        parts.append(index.stats(centres, ids[centres, 1:], sims[centres, 1:]).numpy())
    return graph.nbrs, np.concatenate(parts)


@register("pair_gbdt")
@dataclass(eq=False)
class PairGbdt(Clusterer):
    """Gradient-boosted link classifier over kNN pair statistics; ``tau`` (a probability) None = tuned
    (``tau_``, log-odds) on the labelled tune slice, as FaceT's."""

    name: ClassVar[str] = "pair_gbdt"
    needs_training: ClassVar[bool] = True

    k: int = 30
    tau: float | None = None
    val_fraction: float = 0.2
    tune_samples: int = TUNE_SAMPLES
    tune_on: str = "all"
    max_iter: int = 200
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    partition: str = "union_find"
    link_rule: str = TUNED_RULE
    infomap_weight: str = "probability"
    infomap_trials: int = 1  # Infomap's searches and Markov time (clustering.partition.InfomapSearch)
    infomap_markov_time: float = 1.0
    max_size: int | None = None
    min_size: int = 1
    seed: int = 0
    tau_: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k < 2 or not 0.0 <= self.val_fraction < 1.0 or self.tune_samples < 1:
            raise ConfigError(f"pair_gbdt: k must be >= 2, val_fraction in [0, 1) and tune_samples >= 1, got "
                              f"{self.k}, {self.val_fraction}, {self.tune_samples}")
        infomap_search(self)  # refuses trials under 1 and a Markov time <= 0
        if self.max_iter < 1 or self.learning_rate <= 0 or self.max_leaf_nodes < 2:
            raise ConfigError(f"pair_gbdt: max_iter >= 1, learning_rate > 0 and max_leaf_nodes >= 2, got "
                              f"{self.max_iter}, {self.learning_rate}, {self.max_leaf_nodes}")
        choices = {"partition": PARTITION_METHODS, "link_rule": RULE_CHOICES, "infomap_weight": LINK_WEIGHTS,
                   "tune_on": ("heldout", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"pair_gbdt: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.tau is not None and not 0.0 <= self.tau < 1.0:
            raise ConfigError(f"pair_gbdt: tau must be a probability in [0, 1) or None, got {self.tau}")
        self.model_ = None
        self.link_rule_: str | None = None

    @property
    def threshold(self) -> float:
        """The link threshold in use, as log-odds: the configured probability's, else the tuned one."""
        if self.tau is not None:
            return log_odds(self.tau)
        if self.tau_ is None:
            raise ConfigError("pair_gbdt: call fit on labelled features first")
        return self.tau_

    @property
    def rule(self) -> str:
        """The rule combining a pair's two directions: the configured one, or the tuned one."""
        if self.link_rule != TUNED_RULE:
            return self.link_rule
        if self.link_rule_ is None:
            raise ConfigError("pair_gbdt: link_rule='tuned' but no rule tuned yet: call fit first")
        return self.link_rule_

    def fit(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None) -> PairGbdt:
        """Train on the identities left after holding out ``val_fraction``; tune tau (and the rule) on
        the tune slice of held-out and trained identities."""
        check_features(features, "labelled features")
        labels = np.asarray(labels)
        if labels.shape != (len(features),):
            raise DataError("labels", f"expected {len(features)} labels for the labelled features, got shape {labels.shape}")
        train_rows, val_rows = split_by_identity(labels, self.val_fraction, self.seed)
        graph = knn_graph_for(features[train_rows], knn if len(val_rows) == 0 else None, self.k)
        self.model_ = self._train(graph, labels[train_rows])
        self._tune(features, labels, val_rows, knn)
        return self

    def retuned(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, **changes: object) -> PairGbdt:
        """A copy sharing the trained trees, with settings that do not change them (``AFTER_TRAINING``)
        changed, and tau (and the rule) tuned again on the slice ``fit`` tuned on (pass the same data)."""
        if self.model_ is None:
            raise ConfigError("pair_gbdt: call fit on labelled features first")
        refused = sorted(set(changes) - AFTER_TRAINING)
        if refused:
            raise ConfigError(f"pair_gbdt: {', '.join(refused)} change the trees: fit a new model instead "
                              f"(retuned takes {', '.join(sorted(AFTER_TRAINING))})")
        clone = replace(self, **changes)
        clone.model_ = self.model_
        check_features(features, "labelled features")
        labels = np.asarray(labels)
        clone._tune(features, labels, split_by_identity(labels, clone.val_fraction, clone.seed)[1], knn)
        return clone

    def _tune(self, features: np.ndarray, labels: np.ndarray, val_rows: np.ndarray, knn: KnnGraph | None) -> None:
        if not len(val_rows):
            if self.tau is None:
                log.warning("pair_gbdt: no validation slice to tune tau on (val_fraction=0) and no tau given: links "
                            "are cut at p = 0.5; pass tau= to choose")
                self.tau_ = 0.0
            if self.link_rule == TUNED_RULE:
                log.warning("pair_gbdt: link_rule='tuned' but no validation slice to tune it on (val_fraction=0): "
                            "using %r", EPOCH_RULE)
                self.link_rule_ = EPOCH_RULE
            return
        heldout, rows, _ = tuning_slices(labels, val_rows, self.tune_samples, self.tune_samples, self.seed)
        graph = knn_graph_for(features[rows], knn if len(rows) == len(labels) else None, self.k)
        ids, scores = self._directed(self.model_, graph)
        tuning = tune_links(labels[rows], heldout[rows], ids, scores, rules_to_try(self.link_rule, True),
                            None if self.tau is None else [log_odds(self.tau)], tune_on=self.tune_on,
                            partition=self.partition, max_size=self.max_size, seed=self.seed,
                            link_weight=self.infomap_weight, infomap=infomap_search(self), name="pair_gbdt")
        self.tau_ = tuning.tau
        self.link_rule_ = tuning.rule if self.link_rule == TUNED_RULE else None

    def directed_links(self, features: np.ndarray, knn: KnnGraph | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, k]: each node then its k - 1 neighbours, log-odds [N, k] that the neighbour is the node's
        identity; -inf at padding)."""
        if self.model_ is None:
            raise ConfigError("pair_gbdt: call fit on labelled features first")
        return self._directed(self.model_, knn_graph_for(features, knn, self.k))

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        ids, scores = self.directed_links(features, knn)
        n = len(features)
        src, dst, weight = undirected_links(n, ids, scores, self.rule, self.threshold, logits=True)
        labels = partition_links(n, src, dst, weight, method=self.partition, tau=self.threshold,
                                 max_size=self.max_size, min_size=self.min_size, seed=self.seed,
                                 link_weight=self.infomap_weight, logits=True,
                                 **infomap_search(self).params(self.partition))
        self.confidence_ = cluster_confidence(labels, ids, scores, self.rule, logits=True)
        return labels

    def _train(self, graph: KnnGraph, labels: np.ndarray):
        from sklearn.ensemble import HistGradientBoostingClassifier

        ids, stats = edge_statistics(graph)
        same = labels[ids[:, 1:]] == labels[:, None]
        real = ids[:, 1:] >= 0
        if same[real].all() or not same[real].any():
            raise DataError("labels", "pair_gbdt needs both same-identity and different-identity kNN pairs to learn from")
        model = HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                               max_leaf_nodes=self.max_leaf_nodes, random_state=self.seed)
        return model.fit(stats[real], same[real])

    def _directed(self, model, graph: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, k], log-odds [N, k] of node -> neighbour; -inf at padding, the node's own column unused)."""
        ids, stats = edge_statistics(graph)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        real = ids[:, 1:] >= 0
        scores[:, 1:][real] = model.decision_function(stats[real])
        return ids, scores

    def save(self, path: str | Path) -> Path:
        """Pickle the fitted trees, parameters and tau (a file this project wrote; load only your own)."""
        if self.model_ is None:
            raise ConfigError("pair_gbdt: nothing to save before fit")
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(pickle.dumps({"format": FORMAT, "params": params, "tau": self.tau_,
                                                "link_rule": self.link_rule_, "model": self.model_}))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PairGbdt:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "pair_gbdt model file not found")
        try:
            payload = pickle.loads(path.read_bytes())
        except Exception as exc:  # pickle raises many types on a foreign file
            raise DataError(path, f"not a readable pair_gbdt model ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DataError(path, "not a pair_gbdt model file (format tag missing)")
        method = cls(**payload["params"])
        method.tau_, method.link_rule_, method.model_ = payload["tau"], payload["link_rule"], payload["model"]
        return method
