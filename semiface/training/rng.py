"""RNG state of a training process (saved with every checkpoint, per rank, and restored on resume)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """The torch, CUDA (on ``device``), numpy and python RNG states, as tensors and tuples torch.save keeps."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back what ``capture_rng_state`` took."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
