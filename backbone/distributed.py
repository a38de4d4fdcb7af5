"""The DDP context of a training process: join torchrun's process group, pick the rank's device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from semiface.devices import resolve_device
from semiface.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """Rank and world size (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); pick the device."""
    device = resolve_device(device_spec)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), device
    owns_group = not dist.is_initialized()
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not 0 <= local_rank < torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this machine shows {torch.cuda.device_count()} GPU(s) to torch: "
                              "start at most that many processes per node (torchrun --nproc_per_node) or set CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), owns_group), device


def gather_objects(obj: Any, world: Distributed) -> list[Any]:
    """``obj`` of every rank, in rank order (a list of one outside DDP)."""
    if world.world_size == 1:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out
