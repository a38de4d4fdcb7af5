"""The manifest rows a backbone trains on: ``label >= 0`` outside the evaluation splits, checked, with
their loss weights and (two heads) the labelled / pseudo class layout."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from semiface.errors import DataError

TRAINING_SPLITS = ("labelled", "unlabelled")  # unlabelled rows carry a label only as pseudo-labels


@dataclass(frozen=True)
class TrainingRows:
    """The manifest rows to train on, their labels and loss weights."""

    frame: pd.DataFrame
    labels: np.ndarray  # int64 [n]
    weights: np.ndarray  # float32 [n]
    num_classes: int
    head_classes: tuple[int, ...]  # (num_classes,) for one head; (labelled, pseudo) class counts for two

    def fingerprint(self) -> str:
        """A hash of what is trained on (images, labels, weights): a changed manifest is a new run."""
        keys = [c for c in ("path", "rec_index") if c in self.frame.columns]
        digest = hashlib.sha256()
        digest.update(pd.util.hash_pandas_object(self.frame[keys], index=False).to_numpy().tobytes())
        digest.update(self.labels.tobytes())
        digest.update(self.weights.tobytes())
        return digest.hexdigest()


def select_training_rows(
    frame: pd.DataFrame, source: str | Path, num_classes: int | None = None, heads: str = "single"
) -> TrainingRows:
    """Rows with ``label >= 0`` outside the evaluation splits, checked: labels in range, no empty class,
    weights finite and >= 0; with ``heads="multi"`` also the labelled / pseudo class layout.

    Probe and distractor rows are never trained on, whatever their label: they are the evaluation set.
    """
    labels = frame["label"].to_numpy(np.int64)
    if (labels < -1).any():
        bad = np.flatnonzero(labels < -1)[:5].tolist()
        raise DataError(source, f"column 'label': values below -1 (unlabelled) in rows {bad} (first 5 shown)")
    keep = (labels >= 0) & frame["split"].isin(TRAINING_SPLITS).to_numpy()
    if not keep.any():
        raise DataError(source, f"no rows with label >= 0 in the {' or '.join(TRAINING_SPLITS)} splits to train on")
    labels = np.where(keep, labels, -1)
    n_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.max() >= n_classes:
        bad = np.flatnonzero(labels >= n_classes)[:5].tolist()
        raise DataError(source, f"column 'label': labels out of range [0, {n_classes}) in rows {bad} (first 5 shown)")
    counts = np.bincount(labels[keep], minlength=n_classes)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        raise DataError(
            source,
            f"{len(empty)} empty class(es) {empty[:10].tolist()} (first 10 shown): class ids must be "
            f"contiguous 0..{n_classes - 1}, each with at least one training image "
            f"(rows of the {' or '.join(TRAINING_SPLITS)} splits)",
        )
    if "weight" in frame.columns:
        weights = frame["weight"].to_numpy(np.float32)[keep]
        if not np.isfinite(weights).all() or (weights < 0).any():
            bad = np.flatnonzero(keep)[~np.isfinite(weights) | (weights < 0)][:5].tolist()
            raise DataError(source, f"column 'weight': NaN, infinite or negative weights in rows {bad} (first 5 shown)")
        if not (weights > 0).any():
            raise DataError(source, "column 'weight': every training row has weight 0")
    else:
        weights = np.ones(int(keep.sum()), np.float32)
    kept = frame[keep].reset_index(drop=True)
    head_classes = (n_classes,) if heads == "single" else _two_head_classes(kept, labels[keep], n_classes, source)
    return TrainingRows(kept, labels[keep], weights, n_classes, head_classes)


def _two_head_classes(rows: pd.DataFrame, labels: np.ndarray, num_classes: int, source: str | Path) -> tuple[int, int]:
    """(L, P): labelled classes 0..L-1 (each with a ``labelled`` row), pseudo classes L..L+P-1; >= 2 of each.

    A row of the ``unlabelled`` split whose label is a labelled class (the ground-truth upper bound
    gives a known identity its labelled class) trains the labelled head.
    """
    is_labelled = (rows["split"] == "labelled").to_numpy()
    if not is_labelled.any():
        raise DataError(source, "heads='multi': no labelled rows (split 'labelled', label >= 0) for the labelled head")
    n_labelled = int(labels[is_labelled].max()) + 1
    pseudo_classes = num_classes - n_labelled
    if pseudo_classes == 0:
        raise DataError(source, f"heads='multi': no pseudo-labelled rows (split 'unlabelled' with a label past the "
                                f"{n_labelled} labelled classes) for the pseudo head; train with heads='single'")
    inside = np.setdiff1d(np.arange(n_labelled), labels[is_labelled])
    if len(inside):
        raise DataError(
            source,
            f"heads='multi': class(es) {inside[:10].tolist()} (first 10 shown) lie inside the labelled range "
            f"0..{n_labelled - 1} but have no 'labelled' row: pseudo classes must be offset past the labelled ones",
        )
    for name, count in (("labelled", n_labelled), ("pseudo", pseudo_classes)):
        if count < 2:
            raise DataError(source, f"heads='multi': {count} {name} class; each head needs at least 2 classes "
                                    f"(with too few pseudo clusters kept, retrain with heads='single')")
    return n_labelled, pseudo_classes
