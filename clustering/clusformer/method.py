"""``Clusformer``: the clustering method behind the harness interface (registered as "clusformer").

fit: hold out a share of whole labelled identities, train the network on the other identities, and
after every epoch cluster a slice of whole labelled identities (``epoch_val_samples`` rows, held-out
and trained identities together) and sweep tau on it: FP/FB per epoch. After training, tau is tuned
on the ``tune_samples`` slice (the rows the baselines tune on; the flow sizes it like the set to
cluster), never on the data clustered. Why trained and held-out identities together and not the
held-out ones alone: union-find chains more as the set grows denser, so a tau tuned on a small,
sparse slice is far too low for a larger set (on generated benchmark features: 0.5 on the slice vs
0.95 best on a test part; the whole labelled set gave 0.97). The held-out identities are what the
network has not seen: links from them into training identities are the false merges the sweep must
price in. Their own scores are reported as ``heldout_pairwise_f`` / ``heldout_bcubed_f``.
fit_predict: sequences for every centre in batches, link log-odds, undirected links under the
link rule, partition (union-find with optional size cap, or Infomap), per-sample confidence.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clustering.base import Clusterer, register
from clustering.clusformer.config import ClusformerConfig
from clustering.clusformer.model import ClusformerNet
from clustering.clusformer.training import predict_sequences, train_clusformer
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
from clustering.pair_stats import STAT_NEIGHBOURS
from clustering.partition import infomap_search, partition_links
from semiface.devices import resolve_device
from semiface.errors import ConfigError, DataError
from semiface.features import check_features
from semiface.training.checkpoints import load_model_file, save_model_file
from semiface.training.history import EpochCallback
from semiface.training.settings import runtime_field_names

log = logging.getLogger(__name__)

_FORMAT = "semiface-clusformer/2"  # 2: tau_ is log-odds


@register("clusformer")
class Clusformer(TunedLinks, Clusterer):
    """Transformer over visual-grammar sequences predicting "same identity as the centre" per neighbour.

    Every parameter is a keyword; None means the value of ``preset`` ("small" for the demo and CPU,
    "paper" for section 5.3 and the paper's algorithm: 6 + 6 blocks, 8 heads, 50 epochs, lr 1e-4, the
    per-slot linear head, no pair statistics, rule "any", union-find). ``tau`` None: tuned on the
    validation slice (``tau_``, log-odds; ``link_rule_`` with ``link_rule="tuned"``). ``checkpoint``:
    a ``.pt`` path written after every epoch and resumed from.
    After ``fit_predict``: ``confidence_`` (float32 [N]), the mean probability of every pair scored
    inside each sample's cluster (``clustering.links.cluster_confidence``): members of a cluster
    chained from two people score low, and ``drop_below`` turns them into -1 directly.
    """

    name = "clusformer"
    needs_training = True

    def __init__(
        self,
        *,
        preset: str = "small",
        k: int | None = None,
        radius_step: float | None = None,
        encoding: str | None = None,
        head: str | None = None,
        pair_stats: bool | None = None,
        d_model: int | None = None,
        nhead: int | None = None,
        num_encoder_layers: int | None = None,
        num_decoder_layers: int | None = None,
        dim_feedforward: int | None = None,
        dropout: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        val_fraction: float | None = None,
        tune_samples: int | None = None,
        epoch_val_samples: int | None = None,
        max_train_centres: int | None = None,
        seed: int | None = None,
        infer_batch_size: int | None = None,
        partition: str | None = None,
        link_rule: str | None = None,
        infomap_weight: str | None = None,
        infomap_trials: int | None = None,
        infomap_markov_time: float | None = None,
        tau: float | None = None,
        taus: tuple[float, ...] | list[float] | None = None,
        tune_on: str | None = None,
        max_size: int | None = None,
        min_size: int | None = None,
        drop_below: float | None = None,
        device: str | None = None,
        inference_precision: str | None = None,
        checkpoint: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        params = {key: value for key, value in locals().items() if key not in ("self", "preset", "checkpoint", "progress", "__class__")}
        if taus is not None:
            params["taus"] = tuple(taus)
        self.config = ClusformerConfig.from_preset(preset, **params)
        self.checkpoint = checkpoint
        self.progress = progress
        self.model_: ClusformerNet | None = None
        self.tau_: float | None = None
        self.link_rule_: str | None = None
        self.history_: list[dict[str, float]] = []
        self.sweep_: pd.DataFrame | None = None

    # ------------------------------------------------------------------ training
    def fit(
        self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, on_epoch: EpochCallback | None = None
    ) -> Clusformer:
        """Train on labelled features; ``knn`` (a graph of ``features``) is reused where its k suffices;
        ``on_epoch`` gets each epoch's record."""
        check_features(features, "labelled features")
        labels = np.asarray(labels)
        if labels.shape != (features.shape[0],):
            raise DataError("labels", f"{labels.shape[0] if labels.ndim else 0} labels for {features.shape[0]} feature rows")
        cfg = self.config
        device = resolve_device(cfg.device)
        train_rows, val_rows = split_by_identity(labels, cfg.val_fraction, cfg.seed)
        if knn is not None:
            _check_graph(knn, features.shape[0])
        train_graph = self._graph_for(features[train_rows], knn if len(val_rows) == 0 else None)
        train_features = features[train_rows]
        validate = tune = None
        if len(val_rows):
            heldout, tune_rows, epoch_rows = tuning_slices(labels, val_rows, cfg.tune_samples, cfg.epoch_val_samples,
                                                           cfg.seed)
            tune = self._validator(features, labels, heldout, tune_rows, knn, device)
            validate = tune if epoch_rows is None else self._validator(features, labels, heldout, epoch_rows, knn, device)

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            model = ClusformerNet(features.shape[1], cfg).to(device)
            self.history_ = train_clusformer(
                model, train_features, labels[train_rows], train_graph, cfg, device,
                validate=validate, checkpoint=self.checkpoint, progress=self.progress, on_epoch=on_epoch,
            )
        self.model_ = model
        if tune is not None:
            self._keep(tune.tune(model, final=True))  # tau (and rule) from the full search on the final weights
        else:
            self._untuned()
        return self

    def retuned(
        self, features: np.ndarray, labels: np.ndarray, knn: KnnGraph | None = None, **changes: Any
    ) -> Clusformer:
        """A copy sharing the trained network, with settings that do not change training (``partition``,
        ``infomap_weight``, ``link_rule``, ``tau``, ...) changed, and tau (and the rule) tuned again on
        the slice of the labelled ``features`` / ``labels`` that ``fit`` tuned on (pass the same ones)."""
        model = self._trained_model()
        allowed = runtime_field_names(ClusformerConfig)
        refused = sorted(set(changes) - allowed)
        if refused:
            raise ConfigError(f"clusformer: {', '.join(refused)} change what training computes: fit a new model "
                              f"instead (retuned takes {', '.join(sorted(allowed))})")
        clone = Clusformer.__new__(Clusformer)
        clone.__dict__.update(self.__dict__)
        clone.config = self.config.with_updates(**changes)
        check_features(features, "labelled features")
        labels = np.asarray(labels)
        cfg = clone.config
        _, val_rows = split_by_identity(labels, cfg.val_fraction, cfg.seed)
        if not len(val_rows):
            clone._untuned()
            return clone
        heldout, tune_rows, _ = tuning_slices(labels, val_rows, cfg.tune_samples, cfg.epoch_val_samples, cfg.seed)
        device = next(model.parameters()).device
        clone._keep(clone._validator(features, labels, heldout, tune_rows, knn, device).tune(model, final=True))
        return clone

    def _keep(self, tuning: LinkTuning) -> None:
        self.sweep_, self.tau_ = tuning.table, tuning.tau
        self.link_rule_ = tuning.rule if self.config.link_rule == TUNED_RULE else None

    def _untuned(self) -> None:
        """No validation slice (``val_fraction=0``): say which threshold and rule are used instead."""
        if self.config.tau is None:
            log.warning("clusformer: no validation slice to tune tau on (val_fraction=0) and no tau given: links are "
                        "cut at p = 0.5; pass tau= to choose")
            self.tau_ = 0.0
        if self.config.link_rule == TUNED_RULE:
            log.warning("clusformer: link_rule='tuned' but no validation slice to tune it on (val_fraction=0): "
                        "using %r", EPOCH_RULE)
            self.link_rule_ = EPOCH_RULE

    def _validator(
        self, features: np.ndarray, labels: np.ndarray, heldout: np.ndarray, rows: np.ndarray,
        knn: KnnGraph | None, device: torch.device,
    ) -> _Validator:
        """Scores of a model on the labelled ``rows`` (their own graph unless they are all rows)."""
        if len(rows) < len(labels):
            features, labels, heldout, knn = features[rows], labels[rows], heldout[rows], None
        return _Validator(self, features, labels, heldout, self._graph_for(features, knn), device)

    # ------------------------------------------------------------------ clustering
    def fit_predict(self, features: np.ndarray, knn: KnnGraph | None) -> np.ndarray:
        """Cluster ``features`` with the trained model; labels int64 [N] (-1 = dropped)."""
        cfg = self.config
        n = features.shape[0]
        ids, scores = self.directed_links(features, knn)
        src, dst, weight = undirected_links(n, ids, scores, self.link_rule, self.tau, logits=True)  # partition keeps > tau only
        labels = partition_links(
            n, src, dst, weight, method=cfg.partition, tau=self.tau, link_weight=cfg.infomap_weight,
            max_size=cfg.max_size, min_size=cfg.min_size, seed=cfg.seed, logits=True,
            **infomap_search(cfg).params(cfg.partition),
        )
        confidence = cluster_confidence(labels, ids, scores, self.link_rule, logits=True)
        if cfg.drop_below is not None:
            labels = np.where(confidence < cfg.drop_below, -1, labels)
        self.confidence_ = confidence.astype(np.float32, copy=False)
        return labels.astype(np.int64, copy=False)

    def directed_links(self, features: np.ndarray, knn: KnnGraph | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, k]: each node then its sequence, log-odds [N, k] that the element is the node's identity;
        -inf at padding)."""
        model = self._trained_model()
        check_features(features, "features", dim=model.feature_dim)
        if knn is not None:
            _check_graph(knn, features.shape[0])
        return predict_sequences(model, features, self._graph_for(features, knn), self.config,
                                 next(model.parameters()).device, progress=self.progress)

    def _graph_for(self, features: np.ndarray, knn: KnnGraph | None) -> KnnGraph:
        """``knn`` when it is as deep as the model reads (k, and the pair statistics' neighbours),
        else a graph built at that depth: sequences are never cut short by a shallow graph."""
        depth = max(self.config.k, STAT_NEIGHBOURS + 1) if self.config.pair_stats else self.config.k
        depth = min(depth, features.shape[0])
        if knn is not None and knn.k >= depth:
            return knn
        if knn is not None:
            log.warning("clusformer: the kNN graph given has k=%d, fewer than the %d columns Clusformer reads (its "
                        "sequence and the pair statistics, self included): building a graph of k=%d here",
                        knn.k, depth, depth)
        return build_knn(features, depth, device=self.config.device)

    def _trained_model(self) -> ClusformerNet:
        if self.model_ is None:
            raise ConfigError("clusformer: call fit (or load a saved model) before fit_predict")
        return self.model_

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the trained model (state_dict, config, feature dim, tau, history) atomically as ``.pt``."""
        model = self._trained_model()
        return save_model_file(path, _FORMAT, {
            "config": self.config.to_dict(), "feature_dim": model.feature_dim,
            "state_dict": {key: value.cpu() for key, value in model.state_dict().items()},
            "tau": self.tau_, "link_rule": self.link_rule_, "history": self.history_,
            "epochs_trained": len(self.history_),
        })

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> Clusformer:
        """Read a model written by ``save``; ``device`` overrides the saved one (auto|cpu|cuda)."""
        state = load_model_file(path, _FORMAT, "Clusformer")
        config = ClusformerConfig.from_dict(state["config"])
        if device is not None:
            config = config.with_updates(device=device)
        method = cls.__new__(cls)
        method.config, method.checkpoint, method.progress = config, None, False
        model = ClusformerNet(int(state["feature_dim"]), config)
        model.load_state_dict(state["state_dict"])
        method.model_ = model.to(resolve_device(config.device))
        method.tau_, method.link_rule_ = state["tau"], state["link_rule"]
        method.history_ = list(state["history"])
        method.sweep_ = None
        return method

    def params(self) -> dict[str, Any]:
        """The full configuration in effect."""
        return self.config.to_dict()


class _Validator:
    """Tunes a model's links on a labelled slice (``clustering.link_tuning``); called after an epoch
    it returns that epoch's scores (quick search, the epoch rule) and sets the method's ``sweep_``."""

    def __init__(self, method: Clusformer, features: np.ndarray, labels: np.ndarray, heldout: np.ndarray,
                 graph: KnnGraph, device: torch.device) -> None:
        self.method, self.features, self.labels, self.heldout, self.graph, self.device = (
            method, features, labels, heldout, graph, device)

    def tune(self, model: ClusformerNet, final: bool) -> LinkTuning:
        """The rule and tau of ``model``'s links: every rule to try with a full search and the configured
        Infomap trials (``final``), or the epoch rule with a quick one and one trial."""
        cfg = self.method.config
        taus = [cfg.tau] if cfg.tau is not None else cfg.taus
        ids, scores = predict_sequences(model, self.features, self.graph, cfg, self.device)
        return tune_links(
            self.labels, self.heldout, ids, scores, rules_to_try(cfg.link_rule, final),
            None if taus is None else [log_odds(t) for t in taus], tune_on=cfg.tune_on, partition=cfg.partition,
            max_size=cfg.max_size, seed=cfg.seed, link_weight=cfg.infomap_weight,
            infomap=infomap_search(cfg, final), quick=not final, name="clusformer",
        )

    def __call__(self, model: ClusformerNet) -> dict[str, float]:
        tuning = self.tune(model, final=False)
        self.method.sweep_ = tuning.table
        return {
            "val_tau": tuning.tau,
            "val_pairwise_f": tuning.scores["all_pairwise_f"],
            "val_bcubed_f": tuning.scores["all_bcubed_f"],
            "heldout_pairwise_f": tuning.scores["heldout_pairwise_f"],
            "heldout_bcubed_f": tuning.scores["heldout_bcubed_f"],
        }


def _check_graph(knn: KnnGraph, n: int) -> None:
    if knn.n != n:
        raise DataError("knn", f"graph has {knn.n} rows but there are {n} feature rows")
    if knn.nbrs.size and int(knn.nbrs.max()) >= n:
        raise DataError("knn", f"graph refers to sample {int(knn.nbrs.max())} but there are only {n} rows")
