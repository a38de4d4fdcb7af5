"""Row selections by whole identities, shared by every method that learns or tunes on labelled data.

* ``split_by_identity``: a seeded share of identities held out of training (validation).
* ``identity_slice``: whole identities in seeded random order, up to a number of rows: the set a
  threshold is tuned on. Every method (baselines, FaceT, Clusformer) takes it with the same
  ``tune_samples`` and seed, so all of them tune on the very same rows; slices of one seed are
  nested (a smaller one is a prefix of a larger one).
* ``validation_slice``: an identity slice that holds at least one held-out identity;
  ``tuning_slices``: the tune and epoch slices of a learned method.
"""

from __future__ import annotations

import numpy as np

# Rows every method tunes its threshold on by default. The flow sets it to the size of the set to
# be clustered (union-find chains more as a set grows denser, so tau must be tuned at that size).
TUNE_SAMPLES = 20_000
# Rows each training epoch of a learned method is scored on (epoch choice only; tau is tuned on
# ``tune_samples`` rows after training). Keeps per-epoch validation minutes at 576K labelled rows.
EPOCH_VAL_SAMPLES = 20_000


def split_by_identity(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation): a random ``fraction`` of identities goes to validation.

    At least one identity is held out when ``fraction`` > 0 and at least one is kept for training;
    no validation rows when ``fraction`` is 0 or there are fewer than 2 identities.
    """
    identities = np.unique(labels)
    if fraction <= 0 or len(identities) < 2:
        return np.arange(len(labels)), np.empty(0, dtype=np.int64)
    n_val = min(max(int(round(fraction * len(identities))), 1), len(identities) - 1)
    held_out = np.random.default_rng(seed).choice(identities, size=n_val, replace=False)
    is_val = np.isin(labels, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def identity_slice(labels: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """Sorted row numbers of whole identities, drawn in seeded random order, up to ``max_samples``
    rows (at least one identity)."""
    identities, counts = np.unique(labels, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(identities))
    taken = np.cumsum(counts[order]) <= max_samples
    taken[0] = True
    return np.flatnonzero(np.isin(labels, identities[order][taken]))


def validation_slice(labels: np.ndarray, heldout: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """``identity_slice`` of ``labels``; when it holds no ``heldout`` row (bool mask), the rows of
    the first held-out identity are added, so that held-out scores always exist."""
    rows = identity_slice(labels, max_samples, seed)
    if heldout[rows].any() or not heldout.any():
        return rows
    first = labels[np.flatnonzero(heldout)[0]]
    return np.union1d(rows, np.flatnonzero(labels == first))


def tuning_slices(
    labels: np.ndarray, val_rows: np.ndarray, tune_samples: int, epoch_val_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(held-out mask of ``val_rows``, rows tau is tuned on, rows each epoch is scored on): both
    ``validation_slice``s, the epoch one nested in the tune one; None for the epoch rows when they
    are the tune rows."""
    heldout = np.zeros(len(labels), dtype=bool)
    heldout[val_rows] = True
    tune_rows = validation_slice(labels, heldout, tune_samples, seed)
    epoch_rows = validation_slice(labels, heldout, min(epoch_val_samples, tune_samples), seed)
    return heldout, tune_rows, None if len(epoch_rows) == len(tune_rows) else epoch_rows
