"""Plots the flows publish beside the library's own (training curve, r_U/L sweep)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from semiface.atomic import atomic_path  # noqa: E402


def plot_training_curve(history: Sequence[Mapping[str, float]], target: str | Path, title: str) -> Path:
    """Mean loss per epoch (and the learning rate on a second axis)."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["loss"] for h in history], marker="o", color="tab:blue", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss", color="tab:blue")
    lr_ax = ax.twinx()
    lr_ax.plot(epochs, [h["lr"] for h in history], linestyle="--", color="tab:gray", label="lr")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    ax.set_title(title)
    return _save(fig, target)


def plot_ratio_sweep(
    ratios: Sequence[float],
    rank1: Sequence[float],
    lower: float | None,
    upper: float | None,
    target: str | Path,
    n_distractors: int,
    upper_ratio: float | None = None,
) -> Path:
    """Rank-1 at the largest distractor size vs r_U/L, with the lower and upper bounds as lines."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(ratios, [100 * r for r in rank1], marker="o", color="tab:blue", label="pseudo-labels (ours)")
    if lower is not None:
        ax.axhline(100 * lower, color="tab:red", linestyle="--", label="lower bound (labelled only)")
    if upper is not None:
        note = f" at r_U/L={upper_ratio:g}" if upper_ratio is not None else ""
        ax.axhline(100 * upper, color="tab:green", linestyle="--", label=f"upper bound (ground truth{note})")
    ax.set_xlabel("r_U/L (unlabelled / labelled images)")
    ax.set_ylabel(f"rank-1 @ {n_distractors} distractors (%)")
    ax.set_xticks(list(ratios))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Does more pseudo-labelled data help?")
    return _save(fig, target)


def _save(fig: plt.Figure, target: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(target)
