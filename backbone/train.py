"""Training loop for the face embedding model: single process, or DDP when launched by torchrun.

``train_backbone`` trains on the manifest rows with ``label >= 0`` (ground-truth classes and,
in a retraining manifest, pseudo classes offset past them), optionally weighting each row's
loss by a float ``weight`` column (e.g. cluster confidence).

Heads (``TrainConfig.heads``): ``single`` trains one margin head over all classes; ``multi`` (a
retraining manifest only) trains one head over the labelled classes 0..L-1 (L = 1 + the largest
label of a ``labelled`` row) and one over the pseudo classes L..C-1, on the shared trunk, batches
drawn from both sets (see :class:`backbone.margin.TwoHeadMargin`).

Head start (``TrainConfig.head_init``): ``random`` centres, or, when fine-tuning a checkpoint
(``init``), ``class_means``: each class's mean embedding under that model (see ``backbone.head_init``).

Run folder (only rank 0 writes; see ``backbone.run_folder``): ``run.json``, ``checkpoint.pt``,
``metrics.json``, ``model.pt``; a folder of another config is refused, never overwritten.

Data (``backbone.loader``, ``backbone.model_input``): workers hand over uint8 batches (JPEGs decoded
with libjpeg-turbo, or on the GPU with ``decode``), augmented by ``TrainConfig.augment`` (flip only, or
albumentations at ``aug_strength``; ``auto`` picks by the training set's size); the float input is made
on the device.

Exact resume: the data order of an epoch is a function of (seed, epoch) (DistributedSampler),
each sample's augmentation a function of (seed, epoch, index), the learning rate a function of
the step, and the torch/numpy/python RNG states (per rank) are saved with every checkpoint; so a
run killed at any point and restarted gives the same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backbone.checkpoint import (
    checkpoint_model_config,
    load_checkpoint,
    load_embedder_state,
    require_same_architecture,
    save_checkpoint,
)
from backbone.distributed import gather_objects, setup_distributed
from backbone.head_init import class_mean_embeddings, imprint
from backbone.loader import make_loader
from backbone.margin import MarginHead, TwoHeadMargin
from backbone.model import FaceEmbedder, build_model
from backbone.model_input import device_batches
from backbone.run_folder import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RUN_FILE,
    TRAIN_STATE_FORMAT,
    check_run_dir,
    resume_identity,
    run_identity,
)
from backbone.steps import MarginModel, learning_rate, make_optimizer, train_step
from backbone.train_config import TrainConfig
from backbone.training_rows import TrainingRows, select_training_rows
from semiface.atomic import save_json
from semiface.devices import autocast_dtype
from semiface.errors import ConfigError, DataError, SemifaceError
from semiface.manifest import read_manifest
from semiface.seeding import seed_everything
from semiface.training.checkpoints import load_training_state, save_training_state
from semiface.training.history import epoch_line
from semiface.training.rng import capture_rng_state, restore_rng_state


class TrainingError(SemifaceError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


def train_backbone(
    manifest_path: Path,
    image_root: Path | None,
    run_dir: Path,
    config: TrainConfig,
    progress: Callable[[dict], None] | None = None,
    record_file: Path | None = None,
) -> Path:
    """Train (or resume, or reuse) a backbone on the labelled rows of a manifest; return ``model.pt``.

    ``progress`` receives one dict per finished epoch (rank 0 only): epoch, epochs, step, loss,
    lr, images_per_sec, seconds, num_images, num_classes. Launched by torchrun, every process
    calls this; each trains on its shard and rank 0 writes.
    """
    manifest_path, run_dir = Path(manifest_path), Path(run_dir)
    if config.head_init == "class_means" and config.init == "scratch":
        raise ConfigError("TrainConfig.head_init: 'class_means' needs a starting model (init = a checkpoint path); "
                          "a scratch model's class means carry no information")
    rows = select_training_rows(read_manifest(manifest_path), manifest_path, config.num_classes, config.heads)
    identity = run_identity(config, rows)
    finished = check_run_dir(run_dir, identity)
    if finished is not None:
        return finished
    world, device = setup_distributed(config.device)
    try:
        per_rank_batch = config.batch_size // world.world_size
        if config.batch_size % world.world_size or per_rank_batch < 2:
            raise ConfigError(
                f"TrainConfig.batch_size: {config.batch_size} does not split into >= 2 images on each of "
                f"{world.world_size} processes"
            )
        if len(rows.labels) < config.batch_size:
            raise DataError(manifest_path, f"{len(rows.labels)} training images, fewer than one batch "
                                           f"(batch_size={config.batch_size})")
        if world.is_main:
            save_json(run_dir / RUN_FILE, identity)
        if world.world_size > 1:
            dist.barrier()
        return _fit(manifest_path, image_root, record_file, run_dir, config, rows, world, device,
                    per_rank_batch, progress, resume_identity(identity))
    finally:
        if world.owns_group:
            dist.destroy_process_group()


def _build(
    config: TrainConfig, rows: TrainingRows, device: torch.device
) -> tuple[FaceEmbedder, MarginHead | TwoHeadMargin]:
    seed_everything(config.seed)
    embedder = build_model(config.model_config(), device)
    if config.init != "scratch":
        source = Path(config.init)
        payload = load_checkpoint(source)
        require_same_architecture(config.model_config(), checkpoint_model_config(payload, source), source)
        load_embedder_state(embedder, payload["model"], source)
    margin = (config.margin, config.s, config.resolved_m, config.easy_margin, config.sample_fraction,
              config.sub_centres)
    if config.heads == "multi":
        head = TwoHeadMargin(config.embedding_dim, *rows.head_classes, *margin)
    else:
        head = MarginHead(config.embedding_dim, rows.num_classes, *margin)
    return embedder, head.to(device)


def _fit(manifest_path, image_root, record_file, run_dir, config, rows, world, device, per_rank_batch, progress,
         identity):
    embedder, head = _build(config, rows, device)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if config.head_init == "class_means" and not checkpoint_path.is_file():  # a resumed run loads its head
        imprint(head, class_mean_embeddings(embedder, rows, image_root, record_file, config.image_size, device,
                                            num_workers=config.num_workers, world=world, decode=config.decode))
    model: nn.Module = MarginModel(embedder, head)
    if world.world_size > 1:
        if device.type == "cuda":  # SyncBatchNorm has no CPU kernel: on gloo each rank keeps its own statistics
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(config, model.parameters())
    amp_dtype = autocast_dtype(device) if config.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # every rank's own random stream (dropout, Partial-FC negatives) from here on
    seed_everything(int(np.random.SeedSequence([config.seed, world.rank]).generate_state(1)[0]))

    data, sampler, loader = make_loader(config, rows, image_root, record_file, world, per_rank_batch, device)
    steps_per_epoch = len(loader)
    start_epoch, step, history = 0, 0, []
    if checkpoint_path.is_file():
        state = load_training_state(checkpoint_path, TRAIN_STATE_FORMAT, identity)
        load_embedder_state(embedder, state["model"], checkpoint_path)
        head.load_state_dict(state["margin"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == world.world_size:
            restore_rng_state(state["rng"][world.rank], device)
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])

    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        started, loss_sum, lr = time.perf_counter(), 0.0, learning_rate(config, step, steps_per_epoch)
        bar = tqdm(device_batches(loader, device, config.image_size), total=steps_per_epoch, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", file=sys.stderr,
                   disable=not (config.verbose and world.is_main))
        for batch, images in bar:
            lr = learning_rate(config, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(model, optimizer, scaler, (images, batch.labels, batch.weights), device, amp_dtype,
                              config.grad_clip)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"{manifest_path}: loss is {loss} at step {step} (epoch {epoch + 1}), last learning rate "
                    f"{lr:.6g}; lower the learning rate, keep grad_clip on, or check the images"
                )
            step += 1
            loss_sum += loss
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}")
        seconds = time.perf_counter() - started
        summary = {"epoch": epoch + 1, "epochs": config.epochs, "step": step, "loss": loss_sum / steps_per_epoch,
                   "lr": lr, "images_per_sec": steps_per_epoch * config.batch_size / seconds, "seconds": seconds,
                   "num_images": len(rows.labels), "num_classes": rows.num_classes, "augment": data.recipe}
        history.append(summary)
        rng_states = gather_objects(capture_rng_state(device), world)
        if world.is_main:
            save_training_state(checkpoint_path, TRAIN_STATE_FORMAT, identity, {
                **_model_payload(config, embedder, head, rows, epoch + 1, step, history),
                "finished": False, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_states,
            })
            save_json(run_dir / METRICS_FILE, history)
            if config.verbose:
                shown = {k: summary[k] for k in ("epoch", "epochs", "loss", "lr", "images_per_sec", "seconds")}
                tqdm.write(epoch_line("backbone", shown), file=sys.stderr)
            if progress is not None:
                progress(summary)

    final = run_dir / MODEL_FILE
    if world.is_main:
        save_checkpoint(final, {**_model_payload(config, embedder, head, rows, config.epochs, step, history),
                                "finished": True})
        checkpoint_path.unlink(missing_ok=True)
    if world.world_size > 1:
        dist.barrier()
    return final


def _model_payload(config, embedder, head, rows, epoch, step, history) -> dict[str, Any]:
    return {"model_config": config.model_config().to_dict(), "model": embedder.state_dict(),
            "num_classes": rows.num_classes, "head_classes": list(rows.head_classes),
            "margin": head.state_dict(), "train_config": config.to_dict(),
            "epoch": epoch, "step": step, "history": history}


if __name__ == "__main__":  # ``python -m backbone.train`` / ``torchrun -m backbone.train``: the command line
    from backbone.train_cli import main

    raise SystemExit(main())
