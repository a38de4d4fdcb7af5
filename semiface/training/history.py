"""Per-epoch records of the three trainers: one log line format, one callback protocol.

A record is a dict with at least ``epoch`` and ``epochs`` (and the trainer's own figures: loss,
learning rate, validation scores...); ``on_epoch(record)`` gets each one as it is finished (the
tasks turn them into dashboard progress).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

EpochCallback = Callable[[dict[str, Any]], None]


def epoch_line(trainer: str, record: Mapping[str, Any]) -> str:
    """``facet epoch 3/8: loss=0.1234, lr=0.002, ...`` (floats to 4 significant digits)."""
    figures = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in record.items() if key not in ("epoch", "epochs"))
    return f"{trainer} epoch {record['epoch']}/{record['epochs']}: {figures}"


def end_of_epoch(trainer: str, record: dict[str, Any], log: logging.Logger, on_epoch: EpochCallback | None) -> None:
    """Log the epoch's line and hand its record to ``on_epoch``."""
    log.info(epoch_line(trainer, record))
    if on_epoch is not None:
        on_epoch(dict(record))
