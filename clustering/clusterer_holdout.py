"""The clusterer's holdout: labelled identities kept out of the first backbone's training.

Its own module so that the first backbone's stage key (which names the code it runs) does not
change when the pseudo-label merge does. Pure functions over manifests; no I/O and no prefect.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from semiface.errors import ConfigError


def clusterer_holdout_mask(manifest: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """Rows of a seeded ``share`` of the labelled identities (bool [N]): kept out of the first
    backbone's training so that the clusterer is fitted, and its thresholds tuned, on features of
    people the backbone has not seen, as the unlabelled ones are."""
    labelled = (manifest["split"] == "labelled").to_numpy()
    identities = np.unique(manifest.loc[labelled, "label"].to_numpy())
    count = holdout_count(share, len(identities))
    chosen = np.random.default_rng(seed).permutation(identities)[:count]
    return labelled & np.isin(manifest["label"].to_numpy(), chosen)


def holdout_count(share: float, identities: int) -> int:
    """How many of ``identities`` labelled identities a hold-out of ``share`` keeps for the clusterer
    (ConfigError unless at least 2 are held out and 2 left to train the backbone, or ``share`` is 0)."""
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"clusterer_holdout: a share in [0, 1), got {share}")
    count = int(round(share * identities))
    if share > 0 and not 2 <= count <= identities - 2:
        raise ConfigError(f"clusterer_holdout={share}: {count} of {identities} labelled identities; "
                          "at least 2 must be held out and 2 left to train the backbone")
    return count


def without_rows(manifest: pd.DataFrame, drop: np.ndarray) -> pd.DataFrame:
    """``manifest`` without the rows of ``drop``, the labelled split's classes renumbered 0..C-1
    (training needs no empty class)."""
    kept = manifest[~drop].reset_index(drop=True)
    labelled = (kept["split"] == "labelled").to_numpy()
    _, renumbered = np.unique(kept.loc[labelled, "label"].to_numpy(), return_inverse=True)
    kept.loc[labelled, "label"] = renumbered.astype(np.int64)
    return kept
