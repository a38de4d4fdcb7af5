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
from clustering.facet.config import FaceTConfig
from clustering.facet.infer import link_probabilities
from clustering.facet.model import FaceTModel
from clustering.facet.neighbours import neighbour_table
from clustering.facet.train import TrainData, model_device, train_model
from clustering.identities import split_by_identity, tuning_slices
from clustering.knn import KnnGraph, build_knn
from clustering.link_tuning import (
    EPOCH_RULE,
    TUNED_RULE,
    LinkTuning,
    TunedLinks,
    log_odds,
    rules_to_try,
    tune_links,
)
from clustering.links import cluster_confidence, undirected_links
from clustering.pair_stats import STAT_NEIGHBOURS, NeighbourhoodIndex
from clustering.partition import infomap_search, partition_links
from semiface.devices import resolve_device
from semiface.errors import ConfigError, DataError
from semiface.features import check_features
from semiface.seeding import seed_everything
from semiface.training.checkpoints import data_fingerprint, load_model_file, save_model_file
from semiface.training.history import EpochCallback
from semiface.training.settings import runtime_field_names

log = logging.getLogger(__name__)

MODEL_FORMAT = "facet-model-v2"  # v2: tau_ is log-odds
CHECKPOINT_NAME = "facet_train.pt"


@register("facet")
class FaceT(TunedLinks, Clusterer):
    """Face Transformer (RE + LP) trained on labelled features; links over tau are partitioned.

    Keyword parameters: ``preset`` (``paper`` | ``demo``) and any ``FaceTConfig`` field, which
    overrides the preset. After ``fit``: ``history_`` (one row per epoch: loss, validation
    FP/FB at the best tau of the sweep), ``tau_`` (the link threshold tuned on the validation slice,
    as log-odds), ``link_rule_`` (with ``link_rule="tuned"``), ``tau_table_`` (FP/FB per tau of the
    last sweep).
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

    # ---- training -------------------------------------------------------------------------
    def fit(
        self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, on_epoch: EpochCallback | None = None
    ) -> FaceT:
        """Train on labelled ``features`` [N, D] / ``labels`` [N]; ``on_epoch`` gets each epoch's record.

        Identities held out by ``val_fraction`` are not trained on. After every epoch a slice of
        whole labelled identities (``epoch_val_samples`` rows, held-out identities among trained
        ones) is clustered at the candidate taus and the epoch with the best held-out FP/FB is
        kept (held-out rows scored within the partition of the whole slice, so merging an unseen
        person into a trained one counts); tau (and the rule, with ``link_rule="tuned"``) is then
        tuned on the ``tune_samples`` slice (the baselines' slice; the flow sizes it like the set
        to cluster). Why a slice of trained and held-out identities and not the held-out ones
        alone: union-find chains more as a set grows denser, so tau must be tuned on a set as dense
        as the one it will cluster. ``knn`` (of all N rows) is reused where a slice is the whole set
        and the graph is deep enough.
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
        else:
            self._untuned()
        return self

    def retuned(self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, **changes: object) -> FaceT:
        """A copy sharing the trained network, with settings that do not change training (``partition``,
        ``infomap_weight``, ``link_rule``, ``tau``, ...) changed, and tau (and the rule) tuned again on
        the slice of the labelled ``features`` / ``labels`` that ``fit`` tuned on (pass the same ones)."""
        model = self._trained_model()
        allowed = runtime_field_names(FaceTConfig)
        refused = sorted(set(changes) - allowed)
        if refused:
            raise ConfigError(f"facet: {', '.join(refused)} change what training computes: fit a new model instead "
                              f"(retuned takes {', '.join(sorted(allowed))})")
        clone = FaceT.__new__(FaceT)
        clone.__dict__.update(self.__dict__)
        clone.config = self.config.replace(**changes)
        features, labels = _checked_labelled(features, labels)
        cfg = clone.config
        _, val_rows = split_by_identity(labels, cfg.val_fraction, cfg.seed)
        if not len(val_rows):
            clone._untuned()
            return clone
        heldout, tune_rows, _ = tuning_slices(labels, val_rows, cfg.tune_samples, cfg.epoch_val_samples, cfg.seed)
        clone._tune_after_training(clone._validator(features, labels, heldout, tune_rows, knn, model_device(model)))
        return clone

    def _tune_after_training(self, tune: _Validator) -> None:
        """Tau (and with ``link_rule="tuned"`` the rule) on the kept (best-epoch) weights, full search."""
        tuning = tune.tune(self._trained_model(), final=True)
        self.tau_, self.tau_table_ = tuning.tau, tuning.table.to_dict("records")
        self.link_rule_ = tuning.rule if self.config.link_rule == TUNED_RULE else None

    def _untuned(self) -> None:
        """No validation slice (``val_fraction=0``): say which threshold and rule are used instead."""
        if self.config.tau is None:
            log.warning("facet: no validation slice to tune tau on (val_fraction=0) and no tau given: links are cut "
                        "at p = 0.5; pass tau= to choose")
            self.tau_ = 0.0
        if self.config.link_rule == TUNED_RULE:
            log.warning("facet: link_rule='tuned' but no validation slice to tune it on (val_fraction=0): using %r",
                        EPOCH_RULE)
            self.link_rule_ = EPOCH_RULE

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
        self, features: np.ndarray, knn: KnnGraph | None = None, min_score: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected links (src < dst, log-odds) between each node and its hop1 neighbours, the two
        directions combined by ``link_rule``; links under ``min_score`` (log-odds; default: the
        threshold in use) dropped."""
        ids, scores = self.directed_links(features, knn)
        return undirected_links(len(features), ids, scores, self.link_rule, self.tau if min_score is None else min_score,
                                logits=True)

    def directed_links(self, features: np.ndarray, knn: KnnGraph | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, L]: each node then its hop1 neighbours, log-odds [N, L] that the neighbour is the node's
        identity; -inf at padding)."""
        model = self._trained_model()
        check_features(features, "features", dim=model.feature_dim)
        return self._directed(model, features, self._neighbourhood(features, knn, model_device(model)))

    def _directed(self, model: FaceTModel, features: np.ndarray, neighbourhood: Neighbourhood) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, L]: each node then its hop1 neighbours, log-odds [N, L] of node -> neighbour)."""
        table = neighbourhood.table
        scores = link_probabilities(model, features, table, self.config, model_device(model), neighbourhood.index,
                                    logits=True, cosines=neighbourhood.cosines)
        return table[:, : scores.shape[1]], scores

    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        """Cluster ids int64 [N] of unlabelled ``features``; sets ``confidence_`` (``cluster_confidence``:
        the mean probability of every pair scored inside the sample's cluster)."""
        cfg = self.config
        ids, scores = self.directed_links(features, knn)
        src, dst, score = undirected_links(len(features), ids, scores, self.link_rule, self.tau, logits=True)
        labels = partition_links(
            len(features), src, dst, score, method=cfg.partition, tau=self.tau, max_size=cfg.max_cluster_size,
            min_size=cfg.min_cluster_size, seed=cfg.seed, link_weight=cfg.infomap_weight, logits=True,
            **infomap_search(cfg).params(cfg.partition),
        )
        self.confidence_ = cluster_confidence(labels, ids, scores, self.link_rule, logits=True)
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
                log.warning("facet: the kNN graph given has k=%d, fewer than the %d columns FaceT reads (hop1, hop2 "
                            "and the pair statistics, self included): building a graph of k=%d here", knn.k, wanted, wanted)
            knn = build_knn(features, wanted, device=cfg.device)
        index = NeighbourhoodIndex.from_graph(knn, device) if cfg.pair_stats else None
        table = neighbour_table(knn.nbrs, count)
        # a table that is a view of the graph's ids has the graph's similarities as its cosines
        cosines = knn.sims[:, : table.shape[1]] if cfg.pair_stats and np.may_share_memory(table, knn.nbrs) else None
        return Neighbourhood(table, index, cosines)

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
        # A model saved before the setting existed was tuned and clusters at Infomap's own Markov time, not today's default.
        config.setdefault("infomap_markov_time", 1.0)
        if device is not None:
            config["device"] = device
        method = cls(**config)
        method.model = FaceTModel(payload["feature_dim"], method.config)
        method.model.load_state_dict(payload["state_dict"])
        method.model.to(resolve_device(method.config.device)).eval()
        method.tau_, method.tau_table_, method.history_ = payload["tau"], payload["tau_table"], payload["history"]
        method.link_rule_ = payload["link_rule"]
        return method


# make_method checks parameters against the signature: expose every config field by name.
FaceT.__signature__ = inspect.Signature(
    [inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default="paper")]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(FaceTConfig)]
)


@dataclass(frozen=True)
class Neighbourhood:
    """What FaceT reads of a set's kNN graph: the neighbour table, the pair-statistics index and,
    when the table is a view of the graph, the graph's cosines of each row to the table's ids."""

    table: np.ndarray
    index: NeighbourhoodIndex | None
    cosines: np.ndarray | None = None


class _Validator:
    """Tunes the links of a labelled slice (``clustering.link_tuning``): tau (log-odds) on the rows
    ``tune_on`` names (the held-out identities, or the whole slice); the epoch score is the held-out
    identities' FP/FB at that tau (``pairwise_f``/``bcubed_f``: rows training never saw, scored within
    the partition of the whole slice)."""

    def __init__(
        self, method: FaceT, features: np.ndarray, labels: np.ndarray, neighbourhood: Neighbourhood, heldout: np.ndarray
    ) -> None:
        self.method, self.features, self.labels, self.neighbours, self.heldout = method, features, labels, neighbourhood, heldout

    def tune(self, model: FaceTModel, final: bool) -> LinkTuning:
        """The rule and tau of ``model``'s links: every rule to try with a full search and the configured
        Infomap trials (``final``), or the epoch rule with a quick one and one trial."""
        cfg = self.method.config
        taus = [cfg.tau] if cfg.tau is not None else cfg.tau_grid
        ids, scores = self.method._directed(model, self.features, self.neighbours)
        return tune_links(
            self.labels, self.heldout, ids, scores, rules_to_try(cfg.link_rule, final),
            None if taus is None else [log_odds(t) for t in taus], tune_on=cfg.tune_on, partition=cfg.partition,
            max_size=cfg.max_cluster_size, seed=cfg.seed, link_weight=cfg.infomap_weight,
            infomap=infomap_search(cfg, final), quick=not final, name="facet",
        )

    def __call__(self, model: FaceTModel) -> dict:
        """Scores of an epoch (quick search, the epoch rule)."""
        tuning = self.tune(model, final=False)
        return {
            "val_tau": tuning.tau, "tune_score": tuning.tune_score,
            "all_pairwise_f": tuning.scores["all_pairwise_f"], "all_bcubed_f": tuning.scores["all_bcubed_f"],
            "pairwise_f": tuning.scores["heldout_pairwise_f"], "bcubed_f": tuning.scores["heldout_bcubed_f"],
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
