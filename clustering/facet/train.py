"""Training FaceT on labelled features: link labels = same identity, cross-entropy, AdamW,
linear warm-up then cosine decay, a validation callback and an atomic checkpoint every epoch.

Resuming from the checkpoint reproduces an uninterrupted run: each epoch's shuffling, dropout and
negative sampling are seeded from (seed, epoch) rather than carried over.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clustering.facet.config import FaceTConfig
from clustering.facet.model import FaceTModel
from clustering.facet.neighbours import enhance_nodes, gather_sequences, sequence_stats
from clustering.pair_stats import NeighbourhoodIndex
from semiface.devices import autocast_dtype
from semiface.training.checkpoints import load_training_state, save_training_state
from semiface.training.history import EpochCallback, end_of_epoch
from semiface.training.schedules import lr_factor
from semiface.training.settings import training_settings

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "facet-train-v2"


@dataclass
class TrainData:
    """A labelled set on the training device: features [N, D], labels [N], neighbour table [N, K],
    and the neighbourhood index of the pair statistics (None when the model does not use them)."""

    features: Tensor
    labels: Tensor
    table: Tensor
    index: NeighbourhoodIndex | None = None

    def pair_stats(self, pivots: Tensor, ids: Tensor) -> Tensor | None:
        """Statistics of the pivots' sequences, or None without an index."""
        return None if self.index is None else sequence_stats(self.index, self.features, pivots, ids)


CALIBRATION_PIVOTS = 2048


def calibrate_pair_norm(model: FaceTModel, data: TrainData, hop1: int, seed: int) -> None:
    """Set the model's statistics standardisation from the pairs of a seeded sample of pivots."""
    if model.pair_norm is None:
        return
    if data.index is None:
        raise ValueError("this FaceT model uses pair statistics: TrainData needs the neighbourhood index")
    generator = torch.Generator().manual_seed(seed)
    pivots = torch.randperm(len(data.labels), generator=generator)[:CALIBRATION_PIVOTS].to(data.table.device)
    ids = data.table[pivots, 1 : hop1 + 1]
    with torch.no_grad():
        stats = data.pair_stats(pivots, ids)
    model.pair_norm.calibrate(stats[ids >= 0])


def candidate_links(ids: Tensor, pad: Tensor, labels: Tensor, pivots: Tensor) -> tuple[Tensor, Tensor]:
    """(candidate mask [B, L]: real neighbours, not the pivot; target [B, L]: 1 = same identity)."""
    candidates = ~pad
    candidates[:, 0] = False
    target = (labels[ids.clamp(min=0)] == labels[pivots][:, None]).long()
    return candidates, target


def positive_fraction(data: TrainData, hop1: int) -> float:
    """Share of same-identity links among all training candidate links."""
    ids = data.table[:, : hop1 + 1]
    pivots = torch.arange(len(ids), device=ids.device)
    candidates, target = candidate_links(ids, ids < 0, data.labels, pivots)
    total = int(candidates.sum())
    return float(target[candidates].sum()) / total if total else 0.5


def link_loss(
    log_probs: Tensor, target: Tensor, candidates: Tensor, weighting: str, positive_share: float, generator: torch.Generator
) -> Tensor:
    """Cross-entropy over the candidate links.

    ``none``: plain mean. ``weighted``: classes weighted by inverse frequency over the training
    set. ``balanced``: every positive and as many random negatives (or the reverse, whichever
    class is rarer in the batch).
    """
    log_probs, target = log_probs[candidates], target[candidates]
    if weighting == "weighted":
        share = min(max(positive_share, 1e-3), 1 - 1e-3)
        weight = torch.tensor([0.5 / (1 - share), 0.5 / share], device=log_probs.device)
        return F.nll_loss(log_probs, target, weight=weight)
    if weighting == "balanced":
        positive = target == 1
        n_keep = int(min(positive.sum(), (~positive).sum()))
        if n_keep > 0:
            rank = torch.rand(len(target), generator=generator, device=target.device)
            keep = torch.zeros_like(positive)
            for cls_mask in (positive, ~positive):
                members = torch.nonzero(cls_mask).squeeze(1)
                keep[members[torch.argsort(rank[members])[:n_keep]]] = True
            log_probs, target = log_probs[keep], target[keep]
    return F.nll_loss(log_probs, target)


def _train_autocast(device: torch.device):
    # Only bf16 needs no loss scaling; fp16-only GPUs train in float32.
    if autocast_dtype(device) == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def train_model(
    model: FaceTModel,
    cfg: FaceTConfig,
    data: TrainData,
    *,
    validate: Callable[[FaceTModel], dict] | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch: EpochCallback | None = None,
) -> list[dict]:
    """Train ``model`` in place for ``cfg.epochs``; returns one history row per epoch.

    With ``validate`` (returning at least ``pairwise_f`` and ``bcubed_f``), the weights of the
    epoch with the best mean of the two are kept at the end; otherwise the last epoch's.
    With ``checkpoint``, state is saved there atomically after each epoch and training resumes
    from it when it exists (refused when it was made with other settings or other data).
    """
    device = data.features.device
    n = len(data.labels)
    per_epoch = n if cfg.max_train_pivots is None else min(n, cfg.max_train_pivots)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    # A warm-up longer than a fifth of training would leave no room for the decay (small sets).
    warmup = min(cfg.warmup_steps, total_steps // 5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total_steps, warmup=warmup, decay="cosine"))
    share = positive_fraction(data, cfg.hop1)
    state = {"epoch": 0, "step": 0, "history": [], "best_state": None, "best_score": -math.inf}
    if checkpoint is not None and checkpoint.is_file():
        state = _resume(checkpoint, model, optimizer, scheduler, cfg, fingerprint)
        log.info("facet: resumed from %s after epoch %d", checkpoint, state["epoch"])
    else:
        calibrate_pair_norm(model, data, cfg.hop1, cfg.seed)

    for epoch in range(state["epoch"], cfg.epochs):
        started = time.perf_counter()
        model.train()
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.as_tensor(np.random.default_rng([cfg.seed, epoch]).permutation(n)[:per_epoch], device=device)
        losses = []
        for start in range(0, per_epoch, cfg.batch_size):
            pivots = order[start : start + cfg.batch_size]
            with _train_autocast(device):
                ids, sequence, pad = gather_sequences(
                    pivots, data.table, cfg.hop1, lambda nodes: enhance_nodes(model, data.features, data.table, nodes, cfg.hop2)
                )
                log_probs = model.link_log_probs(sequence[:, 0], sequence, pad, data.pair_stats(pivots, ids))
            candidates, target = candidate_links(ids, pad, data.labels, pivots)
            if not candidates.any():
                continue
            loss = link_loss(log_probs, target, candidates, cfg.loss_weighting, share, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            losses.append(loss.item())
        row = {"epoch": epoch + 1, "epochs": cfg.epochs, "loss": float(np.mean(losses)) if losses else float("nan"),
               "train_seconds": time.perf_counter() - started, "lr": scheduler.get_last_lr()[0]}
        if validate is not None:
            row.update(validate(model))
            score = (row["pairwise_f"] + row["bcubed_f"]) / 2
            if score > state["best_score"]:
                state["best_score"] = score
                state["best_state"] = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        state["history"].append(row)
        state["epoch"] = epoch + 1
        end_of_epoch("facet", row, log, on_epoch)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, cfg, fingerprint, state)
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return state["history"]




def _identity(model, cfg: FaceTConfig, fingerprint: str) -> dict:
    return {"settings": training_settings(cfg), "feature_dim": model.feature_dim, "data": fingerprint}


def _save_checkpoint(path: Path, model, optimizer, scheduler, cfg: FaceTConfig, fingerprint: str, state: dict) -> None:
    save_training_state(path, CHECKPOINT_FORMAT, _identity(model, cfg, fingerprint), {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state,
    })


def _resume(path: Path, model, optimizer, scheduler, cfg: FaceTConfig, fingerprint: str) -> dict:
    payload = load_training_state(path, CHECKPOINT_FORMAT, _identity(model, cfg, fingerprint), model_device(model))
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return {k: payload[k] for k in ("epoch", "step", "history", "best_state", "best_score")}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
