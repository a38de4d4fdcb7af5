"""Baseline clustering methods behind the ``Clusterer`` interface, registered by name.

* ``knn_uf``: kNN graph, links with cosine above ``tau``, union-find.
* ``infomap``: Infomap (two-level, seeded) over the kNN graph above a similarity floor.
* ``dbscan``: DBSCAN on the kNN graph as a sparse precomputed cosine-distance matrix.
* ``hac``: average-linkage agglomerative clustering restricted to kNN connectivity, cut at a
  cosine-distance threshold.
* ``kmeans_oracle``: MiniBatchKMeans told the true number of identities (an oracle).

Each threshold baseline has one threshold; left as ``None`` it is tuned by ``fit`` on labelled
features (a seeded slice of whole identities), never on the features being clustered. The tuned
value is ``tau_`` and travels with ``save``/``load`` (a small JSON file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from clustering.base import Clusterer, register
from clustering.knn import KnnGraph, build_knn
from clustering.metrics import evaluate_partition
from clustering.partition import link_confidence, partition_links
from semiface.atomic import save_json
from semiface.errors import ConfigError, DataError
from semiface.features import check_features

log = logging.getLogger(__name__)

BASELINE_FORMAT = "semiface-baseline/1"


def _grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(np.arange(start, stop + step / 2, step), 4))


def knn_graph_for(features: np.ndarray, knn: KnnGraph | None, k: int) -> KnnGraph:
    """The first ``k`` columns of ``knn`` (k capped at N), or a graph built here when absent or too short."""
    check_features(features, "features")
    n = len(features)
    k = min(k, n)
    if knn is not None and knn.n != n:
        raise DataError("knn", f"graph has {knn.n} rows but there are {n} feature rows")
    if knn is not None and knn.k >= k:
        return knn if knn.k == k else KnnGraph(nbrs=knn.nbrs[:, :k], sims=knn.sims[:, :k])
    if knn is not None:
        log.info("kNN graph has k=%d < %d wanted: rebuilding it", knn.k, k)
    return build_knn(features, k)


def identity_slice(labels: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """Row numbers of whole identities, drawn in seeded random order, up to ``max_samples`` rows (at least one identity)."""
    identities, counts = np.unique(labels, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(identities))
    taken = np.cumsum(counts[order]) <= max_samples
    taken[0] = True
    return np.flatnonzero(np.isin(labels, identities[order][taken]))


class ThresholdBaseline(Clusterer):
    """A training-free method with one threshold, tuned on labelled features when not given.

    Subclasses are dataclasses with fields ``k``, ``tune_samples``, ``seed``, the threshold field
    named by ``threshold_field`` and its candidate grid named by ``grid_field``; they implement
    ``_cluster_grid``.
    """

    needs_training: ClassVar[bool] = True
    threshold_field: ClassVar[str]
    grid_field: ClassVar[str]
    k: int
    tune_samples: int
    seed: int

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ConfigError(f"{self.name}: k must be >= 2 (the sample itself and a neighbour), got {self.k}")
        if not getattr(self, self.grid_field):
            raise ConfigError(f"{self.name}: {self.grid_field} is empty: nothing to tune {self.threshold_field} over")
        self.tau_: float | None = getattr(self, self.threshold_field)
        self.tuning_: pd.DataFrame | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None) -> ThresholdBaseline:
        """Tune the threshold on a slice of labelled ``features`` (max mean of pairwise and BCubed F).

        A threshold given at construction is kept as is. The table of every candidate is ``tuning_``.
        """
        if getattr(self, self.threshold_field) is not None:
            return self
        check_features(features, "labelled features")
        labels = np.asarray(labels)
        if labels.shape != (len(features),):
            raise DataError("labels", f"expected {len(features)} labels for the labelled features, got shape {labels.shape}")
        rows = identity_slice(labels, self.tune_samples, self.seed)
        if len(rows) < len(labels):
            features, labels, knn = features[rows], labels[rows], None
        graph = knn_graph_for(features, knn, self.k)
        grid = sorted({float(v) for v in getattr(self, self.grid_field)})
        partitions = self._cluster_grid(features, graph, grid)
        table = pd.DataFrame([{self.threshold_field: v, **evaluate_partition(labels, p)} for v, p in zip(grid, partitions, strict=True)])
        score = (table["pairwise_f"] + table["bcubed_f"]).to_numpy() / 2
        self.tau_ = float(grid[int(np.argmax(score))])
        self.tuning_ = table
        return self

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        """Cluster ids int64 [N] at the given or tuned threshold."""
        if self.tau_ is None:
            raise ConfigError(
                f"{self.name}: no {self.threshold_field} given and none tuned: pass {self.threshold_field}= or call fit "
                "on labelled features first"
            )
        graph = knn_graph_for(features, knn, self.k)
        return self._cluster_grid(features, graph, [self.tau_])[0]

    def _cluster_grid(self, features: np.ndarray, graph: KnnGraph, thresholds: list[float]) -> list[np.ndarray]:
        """One labelling per threshold (subclasses may share work across thresholds)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the parameters and the tuned threshold as JSON (atomically)."""
        params = dataclasses.asdict(self)  # type: ignore[call-overload]
        return save_json(path, {"format": BASELINE_FORMAT, "method": self.name, "params": params, "tau": self.tau_})

    @classmethod
    def load(cls, path: str | Path) -> ThresholdBaseline:
        """Read a file written by ``save``; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, f"{cls.name} parameter file not found")
        try:
            payload = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(path, f"not a readable {cls.name} parameter file ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != BASELINE_FORMAT or payload.get("method") != cls.name:
            raise DataError(path, f"not a {cls.name} parameter file (format/method tag missing or different)")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["params"].items()}
        method = cls(**params)
        method.tau_ = payload["tau"]
        return method


@register("knn_uf")
@dataclass(eq=False)
class KnnUnionFind(ThresholdBaseline):
    """kNN + cosine threshold + union-find: links to the ``k``-1 nearest neighbours with cosine > ``tau``.

    ``max_size`` caps clusters (links added by decreasing cosine); clusters under ``min_size``
    get -1. ``confidence_`` is the mean cosine of a sample's links above ``tau`` inside its cluster.
    """

    name: ClassVar[str] = "knn_uf"
    threshold_field: ClassVar[str] = "tau"
    grid_field: ClassVar[str] = "taus"

    k: int = 80
    tau: float | None = None
    taus: tuple[float, ...] = _grid(0.3, 0.9, 0.025)
    max_size: int | None = None
    min_size: int = 1
    tune_samples: int = 20_000
    seed: int = 0

    def _cluster_grid(self, features: np.ndarray, graph: KnnGraph, thresholds: list[float]) -> list[np.ndarray]:
        src, dst, sims = graph.edges()
        out = []
        for tau in thresholds:
            labels = partition_links(graph.n, src, dst, sims, tau=tau, max_size=self.max_size, min_size=self.min_size)
            out.append(labels)
        kept = sims > thresholds[-1]
        self.confidence_ = link_confidence(out[-1], src[kept], dst[kept], sims[kept])
        return out

