"""The clusterer's holdout of labelled identities and the backbone manifest without them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clustering.clusterer_holdout import clusterer_holdout_mask, without_rows
from semiface.errors import ConfigError


def test_clusterer_holdout_takes_whole_labelled_identities_and_the_rest_trains_with_contiguous_classes():
    labels = np.repeat(np.arange(10), 3)
    manifest = pd.DataFrame({
        "path": [f"{i}.png" for i in range(36)], "identity": [f"id{i}" for i in range(36)],
        "label": np.r_[labels, -1, -1, -1, -1, -1, -1],
        "split": ["labelled"] * 30 + ["unlabelled"] * 3 + ["probe"] * 3,
    })
    held = clusterer_holdout_mask(manifest, 0.3, seed=1)
    assert held.sum() == 9 and not held[30:].any()
    assert len(np.unique(manifest["label"][held])) == 3  # whole identities
    assert (clusterer_holdout_mask(manifest, 0.3, seed=1) == held).all()
    assert not (clusterer_holdout_mask(manifest, 0.3, seed=2) == held).all()
    rest = without_rows(manifest, held)
    train = rest[rest["split"] == "labelled"]
    assert len(rest) == 27 and sorted(train["label"].unique()) == list(range(7))
    assert (rest["split"] != "labelled").sum() == 6 and (rest.loc[rest["split"] != "labelled", "label"] == -1).all()
    with pytest.raises(ConfigError, match="at least 2"):
        clusterer_holdout_mask(manifest, 0.05, seed=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        clusterer_holdout_mask(manifest, 1.0, seed=0)
