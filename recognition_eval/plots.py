"""PNG plots of evaluation results (matplotlib's object API, Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from semiface.atomic import atomic_path

Curves = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def size_label(size: int) -> str:
    """10, 100, 1K, 10K, 100K, 1M; other sizes with thousands separators."""
    for unit, name in ((1_000_000, "M"), (1_000, "K")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size:,}"


def draw_rank1(ax: Axes, curves: Curves) -> None:
    """Rank-1 (%) against the number of distractors, log x, one line per label."""
    for label, (sizes, rank1) in curves.items():
        ax.plot(sizes, 100 * np.asarray(rank1, dtype=float), marker="o", label=label)
    ax.set_xscale("log")
    ticks = sorted({int(s) for sizes, _ in curves.values() for s in sizes})
    ax.set_xticks(ticks, labels=[size_label(s) for s in ticks])
    ax.minorticks_off()
    ax.set_xlabel("number of distractors")
    ax.set_ylabel("rank-1 identification (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend()


def draw_roc(ax: Axes, curves: Curves) -> None:
    """TAR (%) against FAR, log x, one line per label (points at FAR 0 are not drawn)."""
    for label, (far, tar) in curves.items():
        far, tar = np.asarray(far, dtype=float), np.asarray(tar, dtype=float)
        keep = far > 0
        ax.plot(far[keep], 100 * tar[keep], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate (%)")
    ax.set_ylim(0, 101)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend()


def plot_rank1_vs_distractors(
    curves: Curves, target: str | Path, title: str = "MegaFace identification"
) -> Path:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    draw_rank1(ax, curves)
    ax.set_title(title)
    return save_figure(fig, target)


def plot_cmc(cmc: Sequence[float], n_distractors: int, target: str | Path) -> Path:
    """Identification rate (%) at rank 1..len(cmc)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ranks = np.arange(1, len(cmc) + 1)
    ax.plot(ranks, 100 * np.asarray(cmc, dtype=float), marker="o")
    ax.set_xticks(ranks if len(ranks) <= 20 else ranks[:: max(1, len(ranks) // 10)])
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_ylim(0, 101)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"CMC with {size_label(n_distractors)} distractors")
    return save_figure(fig, target)


def plot_roc(curves: Curves, target: str | Path, title: str = "verification ROC") -> Path:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    draw_roc(ax, curves)
    ax.set_title(title)
    return save_figure(fig, target)


def plot_comparison(rank1_curves: Curves, roc_curves: Curves, target: str | Path) -> Path:
    """Rank-1 vs distractors and ROC side by side, one line per compared run."""
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    draw_rank1(left, rank1_curves)
    left.set_title("identification")
    draw_roc(right, roc_curves)
    right.set_title("verification")
    return save_figure(fig, target)


def save_figure(fig: Figure, target: str | Path) -> Path:
    """Write a PNG atomically (fixed margins: tight_layout doubles the time of log-axis plots)."""
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92, wspace=0.2)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(target)
