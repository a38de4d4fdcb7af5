"""One training step of the face embedder and its schedule: what the training loop and the benchmarks
share (no data loading here, so it imports without the augmentation stack)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from backbone.margin import MarginHead, TwoHeadMargin
from backbone.model import FaceEmbedder
from backbone.train_config import TrainConfig
from semiface.training.schedules import learning_rate_at


class MarginModel(nn.Module):
    """Embedder + margin head (one or two); ``forward`` returns the loss (the unit DDP wraps)."""

    def __init__(self, embedder: FaceEmbedder, head: MarginHead | TwoHeadMargin) -> None:
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedder(images), labels, weights)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then step decay at ``lr_milestones`` or polynomial decay to 0 (a function of the step)."""
    total = config.epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total - 1)
    return learning_rate_at(step, total, base=config.resolved_lr, warmup=warmup, decay=config.schedule,
                            milestones=config.lr_milestones, gamma=config.lr_gamma, power=config.poly_power)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.resolved_lr, momentum=config.momentum, weight_decay=config.resolved_weight_decay
        )
    return torch.optim.AdamW(params, lr=config.resolved_lr, weight_decay=config.resolved_weight_decay)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    grad_clip: float | None,
) -> float:
    """One optimisation step; returns the loss (averaged over ranks). A non-finite loss skips the update."""
    images, labels, weights = (t.to(device, non_blocking=True) for t in batch)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = model(images, labels, weights)
    value = loss.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value)
        value /= dist.get_world_size()
    loss_value = float(value)
    if not math.isfinite(loss_value):
        return loss_value  # every rank sees the same reduced value and stops together
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss_value
