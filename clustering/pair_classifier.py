"""``pair_gbdt``: a reference learned linkage, gradient-boosted trees over the pair statistics of
every kNN edge (``clustering.pair_stats``), then union-find or Infomap over links above tau.

It is the simplest learned method that uses what the transformers are given as side input, and
the bar they should clear: fitted on one part of the labelled identities, tau is tuned on the
other part (never on the features being clustered), then the trees are refitted on every labelled
identity. sklearn's ``HistGradientBoostingClassifier`` does the learning.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from clustering.base import Clusterer, register
from clustering.baselines import knn_graph_for
from clustering.knn import KnnGraph
from clustering.links import LINK_RULES, undirected_links
from clustering.pair_stats import NeighbourhoodIndex
from clustering.partition import PARTITION_METHODS, link_confidence, partition_links
from semiface.atomic import atomic_path
from semiface.errors import ConfigError, DataError
from semiface.features import check_features

FORMAT = "semiface-pair-gbdt/1"
_CHUNK = 4096  # centres per statistics batch


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
    """Gradient-boosted link classifier over kNN pair statistics; ``tau`` None = tuned on held-out identities."""

    name: ClassVar[str] = "pair_gbdt"
    needs_training: ClassVar[bool] = True

    k: int = 30
    tau: float | None = None
    val_fraction: float = 0.5
    max_iter: int = 200
    learning_rate: float = 0.1
    partition: str = "union_find"
    link_rule: str = "average"
    max_size: int | None = None
    min_size: int = 1
    seed: int = 0
    tau_: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.k < 2 or not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"pair_gbdt: k must be >= 2 and val_fraction in (0, 1), got {self.k}, {self.val_fraction}")
        if self.partition not in PARTITION_METHODS or self.link_rule not in LINK_RULES:
            raise ConfigError(f"pair_gbdt: partition in {PARTITION_METHODS}, link_rule in {LINK_RULES}")
        self.model_ = None
        self.tau_ = self.tau

    def fit(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None) -> PairGbdt:
        """Fit on a share of the labelled identities, tune tau on the rest, refit on all."""
        from clustering.evaluate import sweep_threshold
        from clustering.identities import split_by_identity

        check_features(features, "labelled features")
        labels = np.asarray(labels)
        if labels.shape != (len(features),):
            raise DataError("labels", f"expected {len(features)} labels for the labelled features, got shape {labels.shape}")
        if self.tau is None:
            fit_rows, val_rows = split_by_identity(labels, self.val_fraction, self.seed)
            model = self._train(knn_graph_for(features[fit_rows], None, self.k), labels[fit_rows])
            val_graph = knn_graph_for(features[val_rows], None, self.k)
            src, dst, weight = self._links(model, val_graph)
            _, self.tau_ = sweep_threshold(labels[val_rows], len(val_rows), src, dst, weight, partition=self.partition,
                                           max_size=self.max_size, seed=self.seed)
        self.model_ = self._train(knn_graph_for(features, knn, self.k), labels)
        return self

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        if self.model_ is None or self.tau_ is None:
            raise ConfigError("pair_gbdt: call fit on labelled features first")
        graph = knn_graph_for(features, knn, self.k)
        src, dst, weight = self._links(self.model_, graph)
        labels = partition_links(graph.n, src, dst, weight, method=self.partition, tau=self.tau_,
                                 max_size=self.max_size, min_size=self.min_size, seed=self.seed)
        self.confidence_ = link_confidence(labels, src, dst, weight)
        return labels

    def _train(self, graph: KnnGraph, labels: np.ndarray):
        from sklearn.ensemble import HistGradientBoostingClassifier

        ids, stats = edge_statistics(graph)
        same = labels[ids[:, 1:]] == labels[:, None]
        real = ids[:, 1:] >= 0
        if same[real].all() or not same[real].any():
            raise DataError("labels", "pair_gbdt needs both same-identity and different-identity kNN pairs to learn from")
        model = HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate, random_state=self.seed)
        return model.fit(stats[real], same[real])

    def _links(self, model, graph: KnnGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, stats = edge_statistics(graph)
        probs = np.zeros(ids.shape, dtype=np.float32)
        real = ids[:, 1:] >= 0
        probs[:, 1:][real] = model.predict_proba(stats[real])[:, 1]
        return undirected_links(graph.n, ids, probs, self.link_rule)

    def save(self, path: str | Path) -> Path:
        """Pickle the fitted trees, parameters and tau (a file this project wrote; load only your own)."""
        if self.model_ is None:
            raise ConfigError("pair_gbdt: nothing to save before fit")
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(pickle.dumps({"format": FORMAT, "params": params, "tau": self.tau_, "model": self.model_}))
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
        method.tau_, method.model_ = payload["tau"], payload["model"]
        return method
