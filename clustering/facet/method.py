"""FaceT behind the clustering interface: ``make_method("facet", ...)`` / ``"facet+infomap"``."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clustering.base import Clusterer, register
from clustering.facet.config import EPOCH_RULE, TUNED_RULE, FaceTConfig
from clustering.facet.infer import link_probabilities
from clustering.facet.model import FaceTModel
from clustering.facet.neighbours import neighbour_table
from clustering.facet.train import TrainData, model_device, train_model
from clustering.identities import split_by_identity, tuning_slices
from clustering.knn import KnnGraph, build_knn
from clustering.links import LINK_RULES, undirected_links
from clustering.pair_stats import STAT_NEIGHBOURS, NeighbourhoodIndex
from clustering.partition import link_confidence, partition_links
from semiface.devices import resolve_device
from semiface.errors import ConfigError, DataError
from semiface.features import check_features
from semiface.seeding import seed_everything
from semiface.training.checkpoints import data_fingerprint, load_model_file, save_model_file
from semiface.training.history import EpochCallback

log = logging.getLogger(__name__)

MODEL_FORMAT = "facet-model-v1"
CHECKPOINT_NAME = "facet_train.pt"
DEFAULT_TAU = 0.5  # used only when no tau is set and none could be tuned (no validation slice)


@register("facet")
class FaceT(Clusterer):
    """Face Transformer (RE + LP) trained on labelled features; links over tau are partitioned.

    Keyword parameters: ``preset`` (``paper`` | ``demo``) and any ``FaceTConfig`` field, which
    overrides the preset. After ``fit``: ``history_`` (one row per epoch: loss, validation
    FP/FB at the best tau of the sweep), ``tau_`` (tuned on the validation slice), ``tau_table_``
    (FP/FB per tau of the last sweep).
    """

    name = "facet"
    needs_training = True

    def __init__(self, preset: str = "paper", **overrides: object) -> None:
        self.config = FaceTConfig.preset(preset, **overrides)
        self.model: FaceTModel | None = None
        self.tau_: float | None = None
        self.link_rule_: str | None = None
        self.tau_table_: list[dict] = []
        self.history_: list[dict] = []
        self.confidence_ = None

    @property
    def tau(self) -> float:
        """The link threshold in use: the configured one, else the tuned one, else 0.5."""
        if self.config.tau is not None:
            return self.config.tau
        return self.tau_ if self.tau_ is not None else DEFAULT_TAU

    @property
    def link_rule(self) -> str:
        """The rule combining a pair's two directions: the configured one, or the tuned one
        (``link_rule="tuned"``; before tuning, the rule epochs are scored with)."""
        if self.config.link_rule != TUNED_RULE:
            return self.config.link_rule
        return self.link_rule_ or EPOCH_RULE

    # ---- training -------------------------------------------------------------------------
    def fit(
        self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, on_epoch: EpochCallback | None = None
    ) -> FaceT:
        """Train on labelled ``features`` [N, D] / ``labels`` [N]; ``on_epoch`` gets each epoch's record.

        Identities held out by ``val_fraction`` are not trained on. After every epoch a slice of
        whole labelled identities (``epoch_val_samples`` rows, held-out identities among trained
        ones) is clustered at the candidate taus and the epoch with the best held-out FP/FB is
        kept; tau is then tuned on the ``tune_samples`` slice (the baselines' slice; the flow
        sizes it like the set to cluster). Why a slice of trained and held-out identities and not
        the held-out ones alone: union-find chains more as a set grows denser, so tau must be
        tuned on a set as dense as the one it will cluster. ``knn`` (of all N rows) is reused
        where a slice is the whole set and the graph is deep enough.
        """
        cfg = self.config
        features, labels = _checked_labelled(features, labels)
        if knn is not None and knn.n != len(features):
            raise DataError("knn", f"graph has {knn.n} rows but there are {len(features)} labelled rows")
        seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        train_rows, val_rows = split_by_identity(labels, cfg.val_fraction, cfg.seed)
        train_features, train_labels = features[train_rows], labels[train_rows]
        train_part = self._neighbourhood(train_features, knn if len(val_rows) == 0 else None, device)
        self.model = FaceTModel(features.shape[1], cfg).to(device)
        validate = tune = None
        if len(val_rows):
            heldout, tune_rows, epoch_rows = tuning_slices(labels, val_rows, cfg.tune_samples, cfg.epoch_val_samples,
                                                           cfg.seed)
            tune = self._validator(features, labels, heldout, tune_rows, knn, device)
            validate = tune if epoch_rows is None else self._validator(features, labels, heldout, epoch_rows, knn, device)
        data = TrainData(
            features=torch.as_tensor(train_features).to(device),
            labels=torch.as_tensor(train_labels).to(device),
            table=torch.as_tensor(train_part.table).to(device),
            index=train_part.index,
        )
        checkpoint = Path(cfg.work_dir) / CHECKPOINT_NAME if cfg.work_dir else None
        self.history_ = train_model(
            self.model, cfg, data, validate=validate, checkpoint=checkpoint,
            fingerprint=data_fingerprint(train_features, train_labels), on_epoch=on_epoch,
        )
        if tune is not None:
            self._tune_after_training(tune)
        return self

    def _tune_after_training(self, tune: _Validator) -> None:
        """Tau on the kept (best-epoch) weights, with the full search; with ``link_rule="tuned"`` for
        each rule, keeping the rule whose tuned partition scores best on the tune slice."""
        rules = LINK_RULES if self.config.link_rule == TUNED_RULE else (self.config.link_rule,)
        best = None
        for rule in rules:
            self.link_rule_ = rule if self.config.link_rule == TUNED_RULE else None
            score = tune(self.model, quick=False)["tune_score"]
            log.info("facet: link rule %s, tau %.4f, tune score %.4f", rule, tune.best_tau, score)
            if best is None or score > best[0]:
                best = (score, rule, tune.best_tau, tune.table)
        _, rule, self.tau_, self.tau_table_ = best
        self.link_rule_ = rule if self.config.link_rule == TUNED_RULE else None

    def _validator(
        self, features: np.ndarray, labels: np.ndarray, heldout: np.ndarray, rows: np.ndarray,
        knn: KnnGraph | None, device: torch.device,
    ) -> _Validator:
        """A validator over the labelled ``rows`` (a graph of their own unless they are all rows)."""
        if len(rows) == len(labels):
            return _Validator(self, features, labels, self._neighbourhood(features, knn, device), heldout)
        part = features[rows]
        return _Validator(self, part, labels[rows], self._neighbourhood(part, None, device), heldout[rows])

    # ---- inference ------------------------------------------------------------------------
    def predict_links(
        self, features: np.ndarray, knn: KnnGraph | None = None, min_prob: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected links (src < dst, weight) between each node and its hop1 neighbours, the two
        directions combined by ``link_rule``; weights under ``min_prob`` (default: the threshold
        in use) dropped."""
        model = self._trained_model()
        check_features(features, "features", dim=model.feature_dim)
        neighbourhood = self._neighbourhood(features, knn, model_device(model))
        return self._links(model, features, neighbourhood, self.tau if min_prob is None else min_prob)

    def _links(self, model: FaceTModel, features: np.ndarray, neighbourhood: Neighbourhood, floor: float) -> tuple[np.ndarray, ...]:
        table = neighbourhood.table
        probs = link_probabilities(model, features, table, self.config, model_device(model), neighbourhood.index)
        ids = table[:, : probs.shape[1]]
        return undirected_links(len(features), ids, probs, self.link_rule, floor=floor)

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        """Cluster ids int64 [N] of unlabelled ``features``; sets ``confidence_`` (mean link
        probability inside the sample's cluster)."""
        cfg = self.config
        src, dst, prob = self.predict_links(features, knn)
        labels = partition_links(
            len(features), src, dst, prob, method=cfg.partition, tau=self.tau,
            max_size=cfg.max_cluster_size, min_size=cfg.min_cluster_size, seed=cfg.seed, link_weight=cfg.infomap_weight,
        )
        self.confidence_ = link_confidence(labels, src, dst, prob)
        return labels

    def _neighbourhood(self, features: np.ndarray, knn: KnnGraph | None, device: torch.device) -> Neighbourhood:
        """Neighbour table [N, max(hop1, hop2) + 1] from ``knn`` (built here when absent or too short)
        and, with ``pair_stats``, the index of the pairs' statistics on ``device``."""
        cfg = self.config
        count = max(cfg.hop1, cfg.hop2)
        depth = max(count, STAT_NEIGHBOURS) if cfg.pair_stats else count
        wanted = min(depth + 1, len(features))
        if knn is not None and knn.n != len(features):
            raise DataError("knn", f"graph has {knn.n} rows but there are {len(features)} feature rows")
        if knn is None or knn.k < wanted:
            if knn is not None:
                log.info("facet: kNN graph has k=%d < hop1 + 1 = %d; building a deeper one", knn.k, wanted)
            knn = build_knn(features, wanted, device=cfg.device)
        index = NeighbourhoodIndex.from_graph(knn, device) if cfg.pair_stats else None
        return Neighbourhood(neighbour_table(knn.nbrs, count), index)

    def _trained_model(self) -> FaceTModel:
        if self.model is None:
            raise ConfigError("facet: the model is not trained; call fit() or FaceT.load() first")
        return self.model

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the trained model (weights, config, tuned tau, history) atomically as ``.pt``."""
        model = self._trained_model()
        return save_model_file(path, MODEL_FORMAT, {
            "config": self.config.to_dict(), "feature_dim": model.feature_dim, "state_dict": model.state_dict(),
            "tau": self.tau_, "tau_table": self.tau_table_, "history": self.history_, "link_rule": self.link_rule_,
        })

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> FaceT:
        """Load a model written by ``save``; ``device`` overrides the saved one."""
        payload = load_model_file(path, MODEL_FORMAT, "FaceT")
        config = dict(payload["config"])
        if device is not None:
            config["device"] = device
        method = cls(**config)
        method.model = FaceTModel(payload["feature_dim"], method.config)
        method.model.load_state_dict(payload["state_dict"])
        method.model.to(resolve_device(method.config.device)).eval()
        method.tau_, method.tau_table_, method.history_ = payload["tau"], payload["tau_table"], payload["history"]
        method.link_rule_ = payload.get("link_rule")  # absent from files saved before the rule could be tuned
        return method


# make_method checks parameters against the signature: expose every config field by name.
FaceT.__signature__ = inspect.Signature(
    [inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default="paper")]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(FaceTConfig)]
)


@dataclass(frozen=True)
class Neighbourhood:
    """What FaceT reads of a set's kNN graph: the neighbour table and the pair-statistics index."""

    table: np.ndarray
    index: NeighbourhoodIndex | None


class _Validator:
    """Scores the links of the whole labelled set and tunes tau on them (``tune_on``: the held-out
    identities alone, or the whole set); the epoch score is the held-out identities' FP/FB at that
    tau (``pairwise_f``/``bcubed_f``: rows training never saw)."""

    def __init__(
        self, method: FaceT, features: np.ndarray, labels: np.ndarray, neighbourhood: Neighbourhood, heldout: np.ndarray
    ) -> None:
        self.method, self.features, self.labels, self.neighbours, self.heldout = method, features, labels, neighbourhood, heldout
        self.best_tau: float = DEFAULT_TAU
        self.table: list[dict] = []

    def __call__(self, model: FaceTModel, quick: bool = True) -> dict:
        """Scores of an epoch (``quick``: a coarser tau search) or of the kept weights."""
        from clustering.evaluate import tune_link_threshold

        cfg = self.method.config
        taus = [cfg.tau] if cfg.tau is not None else cfg.tau_grid
        src, dst, prob = self.method._links(model, self.features, self.neighbours, min(taus) if taus else 0.0)
        frame, best_tau, scores = tune_link_threshold(
            self.labels, self.heldout, src, dst, prob, taus, tune_on=cfg.tune_on, partition=cfg.partition,
            max_size=cfg.max_cluster_size, seed=cfg.seed, link_weight=cfg.infomap_weight, quick=quick,
        )
        self.table, self.best_tau = frame.to_dict("records"), float(best_tau)
        tuned_on = "all" if cfg.tune_on == "all" else "heldout"
        return {
            "val_tau": self.best_tau, "tune_score": (scores[f"{tuned_on}_pairwise_f"] + scores[f"{tuned_on}_bcubed_f"]) / 2,
            "all_pairwise_f": scores["all_pairwise_f"], "all_bcubed_f": scores["all_bcubed_f"],
            "pairwise_f": scores["heldout_pairwise_f"], "bcubed_f": scores["heldout_bcubed_f"],
        }


def _checked_labelled(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    check_features(features, "labelled features")
    labels = np.asarray(labels)
    if labels.shape != (len(features),):
        raise DataError("labels", f"expected {len(features)} labels (one per feature row), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError("labels", "training labels must be non-negative integers (no -1 = unlabelled rows)")
    if len(np.unique(labels)) == len(labels):
        raise DataError("labels", "every identity has a single sample: there are no positive links to learn")
    return np.asarray(features, dtype=np.float32), labels.astype(np.int64)
