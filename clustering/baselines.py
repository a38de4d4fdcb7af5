"""Baseline clustering methods behind the ``Clusterer`` interface, registered by name.

* ``knn_uf``: kNN graph, links with cosine above ``tau``, union-find.
* ``infomap``: Infomap (two-level, seeded) over the kNN graph above a similarity floor.
* ``dbscan``: DBSCAN on the kNN graph as a sparse precomputed cosine-distance matrix.
* ``hac``: average-linkage agglomerative clustering restricted to kNN connectivity, cut at a
  cosine-distance threshold.
* ``kmeans_oracle``: MiniBatchKMeans told the true number of identities (an oracle).

Each threshold baseline has one threshold; left as ``None`` it is tuned by ``fit`` on labelled
features (a seeded slice of whole identities), never on the features being clustered. Its
candidates, left as ``None``, are quantiles of the labelled kNN similarities (or distances),
refined around the best (``clustering.thresholds``), so ArcFace-like features (different people
near cosine 0) and non-centred ones (near 0.8) are both searched well; a given grid is used as is.
The tuned value is ``tau_`` and travels with ``save``/``load`` (a small JSON file).
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
from scipy.sparse import coo_matrix, csr_matrix

from clustering.base import Clusterer, register
from clustering.identities import TUNE_SAMPLES, identity_slice
from clustering.knn import KnnGraph, build_knn
from clustering.metrics import evaluate_partition
from clustering.partition import MAX_LINKS_PER_NODE, link_confidence, partition_links
from clustering.thresholds import REFINE_COUNT, quantile_candidates, two_stage_search
from clustering.union_find import connected_components
from semiface.atomic import save_json
from semiface.errors import ConfigError, DataError
from semiface.features import check_features

log = logging.getLogger(__name__)

BASELINE_FORMAT = "semiface-baseline/1"


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
        log.warning("kNN graph given has k=%d, fewer than the %d neighbours wanted: building a graph of k=%d here", knn.k, k, k)
    return build_knn(features, k)


class ThresholdBaseline(Clusterer):
    """A training-free method with one threshold, tuned on labelled features when not given.

    Subclasses are dataclasses with fields ``k``, ``tune_samples``, ``seed``, the threshold field
    named by ``threshold_field`` and its candidate grid named by ``grid_field`` (None = derived
    from the labelled kNN similarities, or distances when ``threshold_is_distance``); they
    implement ``_cluster_grid``.
    """

    needs_training: ClassVar[bool] = True
    threshold_field: ClassVar[str]
    grid_field: ClassVar[str]
    threshold_is_distance: ClassVar[bool] = False
    k: int
    tune_samples: int
    seed: int

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ConfigError(f"{self.name}: k must be >= 2 (the sample itself and a neighbour), got {self.k}")
        if self.tune_samples < 1:
            raise ConfigError(f"{self.name}: tune_samples must be >= 1 (rows the threshold is tuned on), got {self.tune_samples}")
        grid = getattr(self, self.grid_field)
        if grid is not None and len(grid) == 0:
            raise ConfigError(f"{self.name}: {self.grid_field} is empty: nothing to tune {self.threshold_field} over "
                              "(None derives the candidates from the labelled data)")
        self.tau_: float | None = getattr(self, self.threshold_field)
        self.tuning_: pd.DataFrame | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None) -> ThresholdBaseline:
        """Tune the threshold on a slice of labelled ``features`` (max mean of pairwise and BCubed F).

        A threshold given at construction is kept as is. The table of every candidate tried is ``tuning_``.
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
        grid = getattr(self, self.grid_field)
        if grid is None:
            values = self._threshold_values(features, graph)
            coarse, refine = quantile_candidates(values, descending=self.threshold_is_distance), REFINE_COUNT
        else:
            coarse, refine = list(grid), 0

        def score(thresholds: list[float]) -> list[dict]:
            return [evaluate_partition(labels, p) for p in self._cluster_grid(features, graph, thresholds)]

        self.tau_, self.tuning_ = two_stage_search(score, coarse, refine=refine, key=self.threshold_field)
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

    def _threshold_values(self, features: np.ndarray, graph: KnnGraph) -> np.ndarray:
        """The values the threshold cuts, whose quantiles are the candidates: kNN similarities or distances."""
        sims = graph.edges()[2]
        return 1.0 - sims if self.threshold_is_distance else sims

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
    taus: tuple[float, ...] | None = None
    max_size: int | None = None
    min_size: int = 1
    tune_samples: int = TUNE_SAMPLES
    seed: int = 0

    def _cluster_grid(self, features: np.ndarray, graph: KnnGraph, thresholds: list[float]) -> list[np.ndarray]:
        src, dst, sims = graph.edges(min_sim=min(thresholds))  # no threshold keeps an edge at or under the lowest
        out = []
        for tau in thresholds:
            labels = partition_links(graph.n, src, dst, sims, tau=tau, max_size=self.max_size, min_size=self.min_size)
            out.append(labels)
        kept = sims > thresholds[-1]
        self.confidence_ = link_confidence(out[-1], src[kept], dst[kept], sims[kept])
        return out



@register("infomap")
@dataclass(eq=False)
class KnnInfomap(ThresholdBaseline):
    """Infomap on the kNN graph: links to the ``k``-1 nearest neighbours with cosine > ``min_sim``.

    Edge weight = cosine ** ``weight_power``; two-level Infomap, ``seed``-ed, best of ``num_trials``
    (see ``clustering.partition.infomap_partition``), each node keeping at most its
    ``max_links_per_node`` strongest links (None: all). Only the edges over the lowest threshold
    asked for are ever listed (``KnnGraph.edges`` filters chunk by chunk). ``confidence_`` as for ``knn_uf``.
    """

    name: ClassVar[str] = "infomap"
    threshold_field: ClassVar[str] = "min_sim"
    grid_field: ClassVar[str] = "min_sims"

    k: int = 80
    min_sim: float | None = None
    min_sims: tuple[float, ...] | None = None
    weight_power: float = 1.0
    num_trials: int = 1
    markov_time: float = 1.0
    max_links_per_node: int | None = MAX_LINKS_PER_NODE
    max_size: int | None = None
    min_size: int = 1
    tune_samples: int = TUNE_SAMPLES
    seed: int = 0

    def _cluster_grid(self, features: np.ndarray, graph: KnnGraph, thresholds: list[float]) -> list[np.ndarray]:
        src, dst, sims = graph.edges(min_sim=min(thresholds))  # no threshold keeps an edge at or under the lowest
        params = {"num_trials": self.num_trials, "weight_power": self.weight_power, "markov_time": self.markov_time,
                  "max_links_per_node": self.max_links_per_node}
        out = [
            partition_links(
                graph.n, src, dst, sims, method="infomap", tau=floor, max_size=self.max_size,
                min_size=self.min_size, seed=self.seed, **params,
            )
            for floor in thresholds
        ]
        kept = sims > thresholds[-1]
        self.confidence_ = link_confidence(out[-1], src[kept], dst[kept], sims[kept])
        return out


def symmetric_distances(graph: KnnGraph) -> csr_matrix:
    """The kNN graph as a symmetric sparse matrix of cosine distances (1 - cosine, >= 0), self excluded.

    A pair that is a neighbour in either direction is stored in both directions; an absent pair
    means "not a neighbour" (infinitely far), as sklearn reads a sparse precomputed matrix.
    """
    src, dst, sims = graph.edges()
    rows, cols = np.concatenate([src, dst]), np.concatenate([dst, src])
    dist = np.maximum(1.0 - np.concatenate([sims, sims]).astype(np.float64), 0.0)
    codes, first = np.unique(rows * graph.n + cols, return_index=True)
    return coo_matrix((dist[first], (codes // graph.n, codes % graph.n)), shape=(graph.n, graph.n)).tocsr()


@register("dbscan")
@dataclass(eq=False)
class KnnDbscan(ThresholdBaseline):
    """DBSCAN (sklearn) with cosine distance, on the kNN graph as a sparse precomputed distance matrix.

    A sample with at least ``min_samples`` samples (itself included) within cosine distance ``eps``
    among its kNN is a core sample; noise gets -1.
    """

    name: ClassVar[str] = "dbscan"
    threshold_field: ClassVar[str] = "eps"
    grid_field: ClassVar[str] = "eps_grid"
    threshold_is_distance: ClassVar[bool] = True

    k: int = 80
    eps: float | None = None
    eps_grid: tuple[float, ...] | None = None
    min_samples: int = 4
    tune_samples: int = TUNE_SAMPLES
    seed: int = 0

    def _cluster_grid(self, features: np.ndarray, graph: KnnGraph, thresholds: list[float]) -> list[np.ndarray]:
        from sklearn.cluster import DBSCAN

        distances = symmetric_distances(graph)
        out = []
        for eps in thresholds:
            labels = DBSCAN(eps=eps, min_samples=self.min_samples, metric="precomputed").fit_predict(distances)
            out.append(np.asarray(labels, dtype=np.int64))
        return out


@register("hac")
@dataclass(eq=False)
class KnnHac(ThresholdBaseline):
    """Agglomerative clustering (sklearn ``linkage_tree``) with cosine distance and ``linkage``,
    merging only along kNN connectivity, cut at ``distance_threshold`` (merges below it are kept).

    The tree is built once and cut at every candidate threshold while tuning. sklearn's merge
    loop is partly Python: about 15 s for 10K samples at k=30 on one core.
    """

    name: ClassVar[str] = "hac"
    threshold_field: ClassVar[str] = "distance_threshold"
    grid_field: ClassVar[str] = "distance_thresholds"
    threshold_is_distance: ClassVar[bool] = True

    k: int = 30
    distance_threshold: float | None = None
    distance_thresholds: tuple[float, ...] | None = None
    linkage: str = "average"
    tune_samples: int = TUNE_SAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.linkage not in ("average", "complete", "single"):
            raise ConfigError(f"hac: linkage must be average, complete or single (cosine distance), got {self.linkage!r}")
        super().__post_init__()

    def _threshold_values(self, features: np.ndarray, graph: KnnGraph) -> np.ndarray:
        """The tree's merge distances: what the cut applies to (average links can exceed every kNN distance)."""
        return self._tree(features, graph)[1]

    def _tree(self, features: np.ndarray, graph: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
        """(children, merge distances) of the linkage tree over ``graph``, built once per graph."""
        cached = getattr(self, "_cached_tree", None)
        if cached is not None and cached[0] is graph:
            return cached[1], cached[2]
        from sklearn.cluster import linkage_tree

        n = graph.n
        src, dst, _ = graph.edges()
        connectivity = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
        children, _, _, _, distances = linkage_tree(
            features, connectivity=connectivity, linkage=self.linkage, affinity="cosine", return_distance=True
        )
        self._cached_tree = (graph, children, distances)
        return children, distances

    def _cluster_grid(self, features: np.ndarray, graph: KnnGraph, thresholds: list[float]) -> list[np.ndarray]:
        n = graph.n
        children, distances = self._tree(features, graph)
        merged = n + np.arange(len(children))
        out = []
        for threshold in thresholds:
            # the clusters at a cut are the components of the merges below it (leaves and merge
            # nodes); components are numbered by smallest member, so the leaves' ids are 0.. contiguous
            below = distances < threshold
            tree_src = np.concatenate([children[below, 0], children[below, 1]])
            tree_dst = np.concatenate([merged[below], merged[below]])
            out.append(connected_components(n + len(children), tree_src, tree_dst)[:n])
        return out


@register("kmeans_oracle")
@dataclass(eq=False)
class KmeansOracle(Clusterer):
    """MiniBatchKMeans on the L2-normalised features given the TRUE number of identities ``n_clusters``.

    An oracle (``is_oracle``): no real clustering run knows that number; shown as a reference only.
    ``init="random"`` skips k-means++ seeding, which dominates the time with thousands of clusters.
    """

    name: ClassVar[str] = "kmeans_oracle"
    is_oracle: ClassVar[bool] = True

    n_clusters: int | None = None
    batch_size: int = 4096
    n_init: int = 1
    init: str = "k-means++"
    seed: int = 0

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None = None) -> np.ndarray:
        """Cluster ids int64 [N]; the kNN graph is not used."""
        from sklearn.cluster import MiniBatchKMeans

        check_features(features, "features")
        if self.n_clusters is None:
            raise ConfigError("kmeans_oracle: n_clusters (the true number of identities) must be given")
        if not 1 <= self.n_clusters <= len(features):
            raise ConfigError(f"kmeans_oracle: n_clusters={self.n_clusters} must be between 1 and N={len(features)}")
        kmeans = MiniBatchKMeans(
            n_clusters=self.n_clusters, batch_size=self.batch_size, n_init=self.n_init, init=self.init,
            random_state=self.seed,
        )
        # float64: sklearn's float32 path upcasts distance blocks one by one, about twice as slow
        return np.asarray(kmeans.fit_predict(np.asarray(features, dtype=np.float64)), dtype=np.int64)
