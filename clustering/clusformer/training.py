"""Training and batched inference of the Clusformer network.

Targets (section 4.3.5): position t of centre i's sequence is 1 when its sample has the centre's
identity. The loss is BCE over positions 1..k-1 and over real (unpadded) elements only: position 0 is
the centre itself, always 1 by construction, so keeping it would teach nothing and dilute the loss.
AdamW with a learning rate decaying linearly to zero over all steps; a checkpoint is written
atomically after every epoch and training resumes from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clustering.clusformer.config import ClusformerConfig
from clustering.clusformer.model import ClusformerNet
from clustering.clusformer.sequences import SequenceBatch, build_sequences, device_features
from clustering.knn import KnnGraph
from clustering.pair_stats import NeighbourhoodIndex
from semiface.devices import autocast_dtype, autocast_to, inference_dtype
from semiface.errors import DataError
from semiface.training.checkpoints import data_fingerprint, load_training_state, save_training_state
from semiface.training.history import EpochCallback, end_of_epoch
from semiface.training.schedules import lr_factor
from semiface.training.settings import training_settings

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "clusformer-train-v2"

Validator = Callable[[ClusformerNet], dict[str, float]]


def sequence_targets(batch: SequenceBatch, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets [B, k] (same identity as the centre) and the mask of positions that enter the loss."""
    ids = batch.ids
    element_labels = labels[np.where(ids >= 0, ids, 0)]
    same = element_labels == element_labels[:, :1]
    counted = ids >= 0
    counted[:, 0] = False  # the centre: always 1, excluded from the loss
    return (
        torch.from_numpy(same.astype(np.float32)).to(device),
        torch.from_numpy(counted).to(device),
    )


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the counted positions (eq. 10 of the paper, averaged)."""
    return nn.functional.binary_cross_entropy_with_logits(logits.float()[counted], targets[counted])


def train_clusformer(
    model: ClusformerNet,
    features: np.ndarray,
    labels: np.ndarray,
    knn: KnnGraph,
    config: ClusformerConfig,
    device: torch.device,
    *,
    validate: Validator | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on the sequences of every labelled centre; return the per-epoch history.

    With ``checkpoint`` (a ``.pt`` path) the state is saved there after every epoch, and an existing
    checkpoint of the same architecture is resumed (its finished epochs are not run again).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise DataError("labelled features", f"need at least 2 labelled samples to train Clusformer, got {n}")
    per_epoch = n if config.max_train_centres is None else min(n, config.max_train_centres)
    steps_per_epoch = -(-per_epoch // config.batch_size)
    total_steps = max(1, steps_per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total_steps, decay="linear"))
    history: list[dict[str, float]] = []
    start_epoch = 0
    identity = training_identity(config, model.feature_dim, features, labels)
    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_training_state(checkpoint, CHECKPOINT_FORMAT, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        log.info("clusformer: resumed from %s after epoch %d", checkpoint, start_epoch)
    else:
        calibrate_pair_norm(model, features, knn, config, device)
    index = pair_index(model, knn, device)
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        order = np.random.default_rng([config.seed, epoch]).permutation(n)[:per_epoch]
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout: same stream whether resumed or not
        total, count = 0.0, 0
        batches = range(0, per_epoch, config.batch_size)
        for start in tqdm(batches, desc=f"clusformer epoch {epoch + 1}", disable=not progress, leave=False):
            batch = build_sequences(
                features, knn, order[start : start + config.batch_size], config.k,
                radius_step=config.radius_step, device=device, index=index,
            )
            targets, counted = sequence_targets(batch, labels, device)
            if not counted.any():
                continue
            with autocast_to(device, amp):
                logits = model(batch.feats, batch.sims, batch.pad, batch.stats)
            loss = sequence_loss(logits, targets, counted)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            counted_n = int(counted.sum())
            total += float(loss.detach()) * counted_n
            count += counted_n
        record: dict[str, float] = {
            "epoch": epoch + 1,
            "epochs": config.epochs,
            "loss": total / max(count, 1),
            "seconds": time.perf_counter() - started,
        }
        if validate is not None:
            record.update(validate(model))
        history.append(record)
        end_of_epoch("clusformer", record, log, on_epoch)
        if checkpoint is not None:
            save_training_state(checkpoint, CHECKPOINT_FORMAT, identity, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1, "step": scheduler.last_epoch, "history": history,
            })
    return history


@torch.inference_mode()
def predict_sequences(
    model: ClusformerNet,
    features: np.ndarray,
    knn: KnnGraph,
    config: ClusformerConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run every centre through the model in batches.

    Returns ``ids`` [N, k] (the sequences in the graph's id dtype, -1 = padding) and ``scores`` float32
    [N, k], the log-odds that element t has centre i's identity (+inf for the centre, -inf at padding).
    The features go to a GPU when they fit (``device_features``).
    """
    model.eval()
    n = features.shape[0]
    amp = inference_dtype(device, config.inference_precision)
    ids = np.empty((n, config.k), dtype=knn.nbrs.dtype)
    scores = np.empty((n, config.k), dtype=np.float32)
    step = config.infer_batch_size
    index = pair_index(model, knn, device)
    features = device_features(features, device)
    for start in tqdm(range(0, n, step), desc="clusformer inference", disable=not progress, leave=False):
        centres = np.arange(start, min(start + step, n))
        batch = build_sequences(features, knn, centres, config.k, radius_step=config.radius_step, device=device, index=index)
        pad = batch.pad if bool(batch.pad.any()) else None  # no padding: no attention mask, the faster kernel
        with autocast_to(device, amp):
            logits = model(batch.feats, batch.sims, pad, batch.stats)
        score = logits.float().masked_fill(batch.pad, -torch.inf)
        score[:, 0] = torch.inf
        ids[start : start + len(centres)] = batch.ids
        scores[start : start + len(centres)] = score.cpu().numpy()
    return ids, scores


def pair_index(model: ClusformerNet, knn: KnnGraph, device: torch.device) -> NeighbourhoodIndex | None:
    """The pair-statistics index of ``knn`` for a model that reads the statistics, else None."""
    return NeighbourhoodIndex.from_graph(knn, device) if model.pair_norm is not None else None


CALIBRATION_CENTRES = 2048


def calibrate_pair_norm(
    model: ClusformerNet, features: np.ndarray, knn: KnnGraph, config: ClusformerConfig, device: torch.device
) -> None:
    """Set the model's statistics standardisation from the sequences of a seeded sample of centres."""
    if model.pair_norm is None:
        return
    centres = np.random.default_rng(config.seed).permutation(len(features))[:CALIBRATION_CENTRES]
    batch = build_sequences(features, knn, centres, config.k, radius_step=config.radius_step, device=device,
                            index=pair_index(model, knn, device))
    real = ~batch.pad
    real[:, 0] = False  # the centre's own position
    model.pair_norm.calibrate(batch.stats[real])


def training_identity(config: ClusformerConfig, feature_dim: int, features: np.ndarray, labels: np.ndarray) -> dict:
    """What a training checkpoint must match to be resumed: the settings training reads, the feature
    dimension and the labelled data."""
    return {"settings": training_settings(config), "feature_dim": feature_dim, "data": data_fingerprint(features, labels)}
