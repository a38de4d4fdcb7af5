"""The precomputed 128-d dlib descriptors of the real face folders (../shared/data/features) and the
seeded identity split the real-feature clustering claims are measured on.

The files hold one L2-normalised row per image of lfw, yale_b and orl, an integer identity per row
and the image's relative path (see that folder's README). Identities are split in two halves by a
seeded permutation: the labelled half fits and tunes every method, the other half is clustered and
scored. Nothing here is used by the product; tests skip when the folder is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semiface.errors import DataError
from semiface.features import check_features

DEFAULT_FEATURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "features"
STEM = "dlib_128"


@dataclass(frozen=True)
class RealFeatureSplit:
    """Labelled and unlabelled halves (disjoint identities) and each row's source folder."""

    labelled_features: np.ndarray
    labelled_labels: np.ndarray
    unlabelled_features: np.ndarray
    unlabelled_labels: np.ndarray
    unlabelled_folders: np.ndarray

    def describe(self) -> str:
        return (f"dlib 128-d descriptors of lfw + yale_b + orl: fitted on {len(np.unique(self.labelled_labels))} labelled "
                f"identities ({len(self.labelled_labels)} images), clustering {len(np.unique(self.unlabelled_labels))} "
                f"others ({len(self.unlabelled_labels)} images)")


def load_dlib_features(folder: Path = DEFAULT_FEATURES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [N, 128], labels int64 [N], source folder of each row [N]); errors name the file."""
    folder = Path(folder)
    paths = {name: folder / name for name in (f"{STEM}.npy", f"{STEM}_labels.npy", f"{STEM}_paths.txt")}
    for path in paths.values():
        if not path.is_file():
            raise DataError(path, "real face feature file not found")
    features = np.load(paths[f"{STEM}.npy"]).astype(np.float32, copy=False)
    check_features(features, paths[f"{STEM}.npy"])
    labels = np.load(paths[f"{STEM}_labels.npy"]).astype(np.int64, copy=False)
    rows = paths[f"{STEM}_paths.txt"].read_text().split()
    if not len(labels) == len(rows) == len(features):
        raise DataError(folder, f"{len(features)} features, {len(labels)} labels and {len(rows)} paths differ in count")
    return features, labels, np.array([row.split("/", 1)[0] for row in rows])


def identity_halves(features: np.ndarray, labels: np.ndarray, folders: np.ndarray, seed: int = 0) -> RealFeatureSplit:
    """Half of the identities (seeded permutation) labelled, the other half to cluster."""
    identities = np.unique(labels)
    labelled_ids = np.random.default_rng(seed).permutation(identities)[: len(identities) // 2]
    labelled = np.isin(labels, labelled_ids)
    return RealFeatureSplit(features[labelled], labels[labelled], features[~labelled], labels[~labelled], folders[~labelled])


def real_feature_split(folder: Path = DEFAULT_FEATURES, seed: int = 0) -> RealFeatureSplit:
    """``identity_halves`` of ``load_dlib_features``."""
    return identity_halves(*load_dlib_features(folder), seed=seed)
