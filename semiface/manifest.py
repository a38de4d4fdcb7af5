"""The image manifest contract (parquet).

Columns: ``path`` (or ``rec_index`` for RecordIO), ``label`` int64 (-1 = unlabelled),
``identity`` str (ground truth where known), ``split`` in {labelled, unlabelled, probe, distractor}.
Retraining manifests add ``label_source`` in {gt, pseudo} and optionally ``weight``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from semiface.atomic import save_parquet
from semiface.errors import DataError

SPLITS = ("labelled", "unlabelled", "probe", "distractor")
LABEL_SOURCES = ("gt", "pseudo")
REQUIRED_COLUMNS = ("label", "identity", "split")
# Identity values that mean "not known" (compared stripped and case-folded).
UNKNOWN_IDENTITIES = frozenset({"", "nan", "none", "<na>", "unknown", "-1"})
# File types read as images (lower-case suffixes).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp"})


def validate_manifest(frame: pd.DataFrame, source: str | Path = "manifest") -> pd.DataFrame:
    """Check the contract; return the frame with canonical dtypes. Errors name the column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if "path" not in frame.columns and "rec_index" not in frame.columns:
        missing.append("path (or rec_index)")
    if missing:
        raise DataError(source, f"manifest is missing column(s): {', '.join(missing)}")
    unknown = sorted(set(frame["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise DataError(source, f"unknown split value(s) {unknown}; expected one of {list(SPLITS)}")
    if "label_source" in frame.columns:
        bad = sorted(set(frame["label_source"].astype(str)) - set(LABEL_SOURCES))
        if bad:
            raise DataError(source, f"unknown label_source value(s) {bad}; expected {list(LABEL_SOURCES)}")
    try:
        labels = frame["label"].astype("int64")
    except (TypeError, ValueError) as exc:
        raise DataError(source, f"column 'label' must be integers ({exc})") from exc
    if pd.api.types.is_float_dtype(frame["label"]):  # astype would truncate 1.5 to 1 silently
        fractional = np.flatnonzero(labels.to_numpy() != frame["label"].to_numpy())
        if len(fractional):
            rows = fractional[:5].tolist()
            raise DataError(source, f"column 'label' must be integers, found fractions in rows {rows} (first 5 shown)")
    frame = frame.assign(label=labels, identity=frame["identity"].astype(str), split=frame["split"].astype(str))
    return frame.reset_index(drop=True)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a parquet manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(path, f"not a readable parquet file ({exc})") from exc
    return validate_manifest(frame, path)


def write_manifest(frame: pd.DataFrame, path: str | Path) -> Path:
    """Validate, then write atomically."""
    return save_parquet(path, validate_manifest(frame, path))


def known_identity_mask(identities: pd.Series) -> np.ndarray:
    """True where a row's ground-truth identity is known (not empty / nan / none / unknown / -1)."""
    return ~identities.astype(str).str.strip().str.casefold().isin(UNKNOWN_IDENTITIES).to_numpy()
