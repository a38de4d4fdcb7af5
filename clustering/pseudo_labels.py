"""Turn a clustering of unlabelled faces into a retraining manifest (pseudo-labels).

Pure functions over manifests (pandas) and arrays; no I/O and no prefect.

* ``sample_unlabelled``: draw N_U = r_U/L x N_L rows of the unlabelled pool (capped by the pool).
* ``merge_pseudo_labels``: keep confident members of large-enough clusters as new classes,
  offset past the labelled classes, beside the labelled rows.
* ``upper_bound_frame`` / ``lower_bound_frame``: the two reference retraining sets
  (ground-truth identities of the sampled part as classes; labelled rows only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from semiface.errors import ConfigError, DataError
from semiface.manifest import known_identity_mask

# Identity strings (after strip + casefold) that mean "ground truth unknown"; validate_manifest
# casts missing values to str, and recognition_eval uses the same set.


@dataclass(frozen=True)
class UnlabelledSample:
    """Row numbers (into the manifest) of the sampled unlabelled images, and how the size was set."""

    index: np.ndarray
    ratio: float
    n_labelled: int
    requested: int
    available: int

    @property
    def capped(self) -> bool:
        """True when the pool held fewer unlabelled images than r_U/L x N_L asked for."""
        return self.requested > self.available

    @property
    def effective_ratio(self) -> float:
        """The r_U/L actually reached: sampled / labelled."""
        return len(self.index) / self.n_labelled

    def describe(self) -> dict:
        """A small JSON-able summary (no row numbers)."""
        return {
            "ratio": self.ratio,
            "n_labelled": self.n_labelled,
            "requested": self.requested,
            "available": self.available,
            "sampled": int(len(self.index)),
            "capped": self.capped,
            "effective_ratio": round(self.effective_ratio, 4),
        }


@dataclass(frozen=True)
class MergeSummary:
    """What the merge kept; purity fields are None when the ground truth is unknown."""

    n_labelled: int
    n_labelled_classes: int
    n_sampled: int
    n_kept: int
    kept_fraction: float
    n_pseudo_classes: int
    dropped_unclustered: int
    dropped_low_confidence: int
    dropped_small_clusters: int
    min_cluster_size: int
    min_confidence: float
    purity: float | None
    identities_kept: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def sample_unlabelled(manifest: pd.DataFrame, ratio: float, seed: int) -> UnlabelledSample:
    """Draw N_U = round(ratio x N_L) unlabelled rows at random (without replacement), capped by the pool.

    N_L is the number of labelled images. The result's ``index`` is sorted (manifest order);
    ``capped`` says when the pool was smaller than asked. The same seed gives the same sample,
    and a larger ratio with the same seed gives a superset of a smaller one.
    """
    if not ratio > 0:
        raise ConfigError(f"ratio: r_U/L must be > 0, got {ratio}")
    split = manifest["split"].to_numpy()
    labelled = np.flatnonzero(split == "labelled")
    pool = np.flatnonzero(split == "unlabelled")
    if len(labelled) == 0:
        raise DataError("manifest", "no labelled rows: r_U/L is relative to the labelled set")
    if len(pool) == 0:
        raise DataError("manifest", "no unlabelled rows to sample from")
    requested = max(1, int(round(ratio * len(labelled))))
    # One fixed permutation per seed: prefixes of it are nested samples across ratios.
    order = np.random.default_rng(seed).permutation(len(pool))
    index = np.sort(pool[order[: min(requested, len(pool))]])
    return UnlabelledSample(
        index=index, ratio=float(ratio), n_labelled=len(labelled), requested=requested, available=len(pool)
    )


def merge_pseudo_labels(
    manifest: pd.DataFrame,
    unlabelled_index: np.ndarray,
    pred_labels: np.ndarray,
    confidence: np.ndarray | None = None,
    *,
    min_cluster_size: int = 2,
    min_confidence: float = 0.0,
) -> tuple[pd.DataFrame, MergeSummary]:
    """Build the retraining set: labelled rows (``label_source`` gt) + kept pseudo-labelled rows.

    ``pred_labels[i]`` / ``confidence[i]`` belong to manifest row ``unlabelled_index[i]``
    (-1 = left unclustered). Members under ``min_confidence`` are dropped first, then clusters
    left with fewer than ``min_cluster_size`` members (singletons by default). Kept clusters get
    contiguous class ids starting right after the largest labelled class id, numbered in order of
    their smallest predicted id. ``weight`` is the confidence for pseudo rows and 1 for labelled
    rows (no confidence given: 1 everywhere). Probe and distractor rows are never included.
    """
    unlabelled_index = np.asarray(unlabelled_index, dtype=np.int64)
    pred = np.asarray(pred_labels, dtype=np.int64)
    n = len(unlabelled_index)
    if pred.shape != (n,):
        raise DataError("pred_labels", f"expected {n} cluster labels (one per sampled row), got shape {pred.shape}")
    conf = np.ones(n, dtype=np.float32) if confidence is None else np.asarray(confidence, dtype=np.float32)
    if conf.shape != (n,):
        raise DataError("confidence", f"expected {n} values (one per sampled row), got shape {conf.shape}")
    if not np.isfinite(conf).all():
        raise DataError("confidence", "NaN or infinite confidence values")
    if min_cluster_size < 1:
        raise ConfigError(f"min_cluster_size must be >= 1, got {min_cluster_size}")
    if n and (unlabelled_index.min() < 0 or unlabelled_index.max() >= len(manifest)):
        raise DataError("unlabelled_index", f"row numbers outside the manifest's {len(manifest)} rows")
    if n and not (manifest["split"].to_numpy()[unlabelled_index] == "unlabelled").all():
        raise DataError("unlabelled_index", "points at rows whose split is not 'unlabelled'")

    labelled = _labelled_rows(manifest)
    offset = int(labelled["label"].max()) + 1

    clustered = pred >= 0
    confident = clustered & (conf >= min_confidence)
    ids, inverse, counts = np.unique(pred[confident], return_inverse=True, return_counts=True)
    big_enough = counts >= min_cluster_size
    keep = np.zeros(n, dtype=bool)
    keep[np.flatnonzero(confident)[big_enough[inverse]]] = True
    # Contiguous new ids for the kept clusters, in order of their predicted id.
    new_id = np.full(len(ids), -1, dtype=np.int64)
    new_id[big_enough] = offset + np.arange(int(big_enough.sum()))
    pseudo_label = np.full(n, -1, dtype=np.int64)
    pseudo_label[np.flatnonzero(confident)] = new_id[inverse]

    pseudo = manifest.iloc[unlabelled_index[keep]].copy()
    pseudo["label"] = pseudo_label[keep]
    pseudo["label_source"] = "pseudo"
    pseudo["weight"] = conf[keep].astype(np.float64) if confidence is not None else 1.0
    frame = pd.concat([labelled, pseudo], ignore_index=True)

    purity, identities = _purity(pseudo)
    summary = MergeSummary(
        n_labelled=len(labelled),
        n_labelled_classes=int(labelled["label"].nunique()),
        n_sampled=n,
        n_kept=int(keep.sum()),
        kept_fraction=float(keep.mean()) if n else 0.0,
        n_pseudo_classes=int(big_enough.sum()),
        dropped_unclustered=int((~clustered).sum()),
        dropped_low_confidence=int((clustered & ~confident).sum()),
        dropped_small_clusters=int((confident & ~keep).sum()),
        min_cluster_size=int(min_cluster_size),
        min_confidence=float(min_confidence),
        purity=purity,
        identities_kept=identities,
    )
    return frame, summary


def upper_bound_frame(manifest: pd.DataFrame, unlabelled_index: np.ndarray) -> tuple[pd.DataFrame, MergeSummary]:
    """Labelled rows + the sampled unlabelled rows labelled by their ground-truth identity.

    An identity already among the labelled classes keeps that class; new identities get
    contiguous ids after the largest labelled id. Rows of the sample must all have a known identity.
    """
    unlabelled_index = np.asarray(unlabelled_index, dtype=np.int64)
    labelled = _labelled_rows(manifest)
    sampled = manifest.iloc[unlabelled_index].copy()
    unknown = ~known_identity_mask(sampled["identity"])
    if unknown.any():
        raise DataError(
            "manifest", f"upper bound needs ground-truth identities; {int(unknown.sum())} sampled rows have none"
        )
    known = dict(zip(labelled["identity"], labelled["label"], strict=False))
    offset = int(labelled["label"].max()) + 1
    new_identities = sorted(set(sampled["identity"]) - set(known))
    known.update({identity: offset + i for i, identity in enumerate(new_identities)})
    sampled["label"] = sampled["identity"].map(known).astype(np.int64)
    sampled["label_source"] = "pseudo"
    sampled["weight"] = 1.0
    frame = pd.concat([labelled, sampled], ignore_index=True)
    n = len(sampled)
    summary = MergeSummary(
        n_labelled=len(labelled),
        n_labelled_classes=int(labelled["label"].nunique()),
        n_sampled=n,
        n_kept=n,
        kept_fraction=1.0 if n else 0.0,
        n_pseudo_classes=int(sampled["label"].nunique()),
        dropped_unclustered=0,
        dropped_low_confidence=0,
        dropped_small_clusters=0,
        min_cluster_size=1,
        min_confidence=0.0,
        purity=1.0 if n else None,
        identities_kept=int(sampled["identity"].nunique()),
    )
    return frame, summary


def lower_bound_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows alone, in the retraining-manifest layout."""
    return _labelled_rows(manifest).reset_index(drop=True)


def _labelled_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    labelled = manifest[manifest["split"] == "labelled"].copy()
    if labelled.empty:
        raise DataError("manifest", "no labelled rows")
    if (labelled["label"] < 0).any():
        raise DataError("manifest", "labelled rows with a negative label")
    labelled["label_source"] = "gt"
    labelled["weight"] = 1.0
    return labelled


def _purity(pseudo: pd.DataFrame) -> tuple[float | None, int | None]:
    """Share of kept rows whose cluster's majority identity is their own; None without ground truth."""
    if pseudo.empty or not known_identity_mask(pseudo["identity"]).all():
        return None, None
    majority = pseudo.groupby("label")["identity"].agg(lambda s: s.value_counts().iloc[0]).sum()
    return float(majority / len(pseudo)), int(pseudo["identity"].nunique())
