"""Scoring partitions: the threshold sweep the learned methods tune tau with.

The harness that runs every method on one feature set (and its CLI) lives here too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from clustering.metrics import evaluate_partition
from clustering.partition import partition_links
from semiface.errors import ConfigError, DataError


def sweep_threshold(
    labels: np.ndarray,
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    taus: Sequence[float],
    *,
    partition: str = "union_find",
    max_size: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, float]:
    """Partition the links at every tau and score it against ``labels``; return (table, best tau).

    The table has one row per tau (pairwise and BCubed P/R/F, NMI, cluster counts); the best tau
    maximises the mean of pairwise F and BCubed F (ties: the smallest tau).
    """
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError("labels", f"expected {n} ground-truth labels, got shape {labels.shape}")
    if len(taus) == 0:
        raise ConfigError("sweep_threshold: no tau to try (empty taus)")
    rows = []
    for tau in sorted({float(t) for t in taus}):
        pred = partition_links(n, src, dst, weight, method=partition, tau=tau, max_size=max_size, seed=seed)
        rows.append({"tau": tau, **evaluate_partition(labels, pred)})
    table = pd.DataFrame(rows)
    score = (table["pairwise_f"] + table["bcubed_f"]) / 2
    best = float(table["tau"].iloc[int(np.argmax(score.to_numpy()))])
    return table, best
