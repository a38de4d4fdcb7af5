"""Where the clustering's large arrays live: on the GPU when they fit in its free memory, else on the host.

The rule (FaceT and Clusformer inference): the budget is the device's free memory when the step
starts (``torch.cuda.mem_get_info``) minus a headroom of ``max(HEADROOM_BYTES, HEADROOM_SHARE x
total)`` kept for activations, the allocator's caching and other processes. Arrays are offered in
a fixed order (the caller's) and each goes to the device while the running total stays within the
budget; the rest stay on the host and are gathered row by row for each batch (``RowStore``), FaceT's
enhanced features then going to host RAM or, past ``memmap_bytes``, to a memory map on disk. On the
CPU there is no budget: host arrays are used where they lie, without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

HEADROOM_BYTES = 2 << 30
HEADROOM_SHARE = 0.2


def device_budget(device: torch.device) -> int | None:
    """Bytes the clustering may keep resident on ``device`` (None on the CPU: no limit, no copy)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return max(0, int(free - max(HEADROOM_BYTES, HEADROOM_SHARE * total)))


def fit_on_device(sizes: Sequence[int], budget: int | None) -> list[bool]:
    """Which of the arrays of ``sizes`` bytes (in order of priority) go to the device: each while the
    running total stays within ``budget``; all of them when there is no budget (the CPU)."""
    if budget is None:
        return [True] * len(sizes)
    placed, total = [], 0
    for size in sizes:
        fits = total + size <= budget
        total += size if fits else 0
        placed.append(fits)
    return placed
