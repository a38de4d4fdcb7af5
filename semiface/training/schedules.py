"""Learning-rate schedules of the three trainers: linear warm-up, then step, poly, cosine or linear decay.

Every schedule is a function of the step alone (exact resume needs nothing else). With ``base`` 1
the value is the factor ``torch.optim.lr_scheduler.LambdaLR`` wants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

DECAYS = ("step", "poly", "cosine", "linear")


def learning_rate_at(
    step: int,
    total: int,
    *,
    base: float = 1.0,
    warmup: int = 0,
    decay: str = "cosine",
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    power: float = 2.0,
) -> float:
    """The rate at ``step`` of ``total``: ``base`` x (step + 1) / warmup during the warm-up; then
    ``step``: x gamma at each milestone (a fraction of ``total``); ``poly``: (1 - progress)^power;
    ``cosine``: half a cosine from 1 to 0; ``linear``: 1 - progress (never below 0), where progress
    runs from 0 at the end of the warm-up to 1 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if decay == "step":
        return base * gamma ** sum(step >= x * total for x in milestones)
    if decay == "poly":
        return base * (1.0 - progress) ** power
    if decay == "cosine":
        return base * (0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
    if decay == "linear":
        return base * max(0.0, 1.0 - progress)
    raise ValueError(f"unknown decay {decay!r}; known: {', '.join(DECAYS)}")


def lr_factor(total: int, *, warmup: int = 0, decay: str = "cosine", **options: float) -> Callable[[int], float]:
    """``learning_rate_at`` with ``base`` 1 as a function of the step (for ``LambdaLR``)."""
    return lambda step: learning_rate_at(step, total, warmup=warmup, decay=decay, **options)
