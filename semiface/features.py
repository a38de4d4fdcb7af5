"""Feature files: ``.npy`` (memory-mapped read) and the learn-to-cluster layout (``.bin`` + ``.meta``).

Features are float32 [N, D] rows in manifest order, L2-normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semiface.atomic import atomic_open, save_npy
from semiface.errors import DataError

FEATURE_DIM = 256


def load_features(path: str | Path, dim: int | None = None, mmap: bool = True) -> np.ndarray:
    """Read features from ``.npy`` or raw ``.bin`` (float32, N x D, no header).

    ``dim`` is checked against ``.npy`` files and required-or-inferred for ``.bin``: when None
    and the ``.bin`` has a label file (see ``meta_for``), D = bytes / (4 x labels); otherwise
    D = 256. Errors name the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "feature file not found")
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(path, f"not a readable .npy file ({exc})") from exc
        if array.ndim != 2:
            raise DataError(path, f"expected a 2-D [N, D] array, found shape {array.shape}")
        if dim is not None and array.shape[1] != dim:
            raise DataError(path, f"expected {dim} feature columns, found {array.shape[1]}")
        if array.dtype != np.float32:
            raise DataError(path, f"expected float32 features, found {array.dtype}")
        return array
    if path.suffix == ".bin":
        size = path.stat().st_size
        dim = _bin_dim(path, size) if dim is None else dim
        row_bytes = 4 * dim
        if size == 0 or size % row_bytes:
            raise DataError(
                path, f"{size} bytes is not a whole number of float32 rows of dimension {dim} ({row_bytes} bytes each)"
            )
        n = size // row_bytes
        if mmap:
            return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
        return np.fromfile(path, dtype=np.float32).reshape(n, dim)
    raise DataError(path, f"unknown feature file type {path.suffix!r} (expected .npy or .bin)")


def meta_for(bin_path: str | Path) -> Path | None:
    """The label file of a learn-to-cluster ``.bin``: ``<stem>.meta`` beside it or in ``../labels/``."""
    bin_path = Path(bin_path)
    for candidate in (bin_path.with_suffix(".meta"), bin_path.parent.parent / "labels" / f"{bin_path.stem}.meta"):
        if candidate.is_file():
            return candidate
    return None


def _bin_dim(path: Path, size: int) -> int:
    """D of a headerless ``.bin`` from its label count (one label a row), else the default 256."""
    meta = meta_for(path)
    if meta is None:
        return FEATURE_DIM
    with open(meta, "rb") as handle:
        rows = sum(1 for line in handle if line.strip())
    if rows == 0 or size % (4 * rows):
        raise DataError(path, f"{size} bytes do not hold {rows} float32 rows (one per label of {meta}); "
                              f"pass the feature dimension explicitly")
    return size // (4 * rows)


def save_features(path: str | Path, features: np.ndarray) -> Path:
    """Write float32 features atomically as ``.npy`` or raw ``.bin``."""
    path = Path(path)
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise DataError(path, f"features must be 2-D [N, D], got shape {features.shape}")
    if path.suffix == ".npy":
        return save_npy(path, features)
    if path.suffix == ".bin":
        with atomic_open(path) as handle:
            features.tofile(handle)
        return path
    raise DataError(path, f"unknown feature file type {path.suffix!r} (expected .npy or .bin)")


def load_meta(path: str | Path, expected: int | None = None) -> np.ndarray:
    """Read a learn-to-cluster ``.meta`` file: one integer label a line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "label file not found")
    labels = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                labels.append(int(text))
            except ValueError as exc:
                raise DataError(path, f"line {lineno}: {text!r} is not an integer label") from exc
    out = np.asarray(labels, dtype=np.int64)
    if expected is not None and len(out) != expected:
        raise DataError(path, f"{len(out)} labels for {expected} feature rows")
    return out


def save_meta(path: str | Path, labels: np.ndarray) -> Path:
    """Write one integer label a line, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{int(v)}\n" for v in np.asarray(labels)))
    return Path(path)


def check_features(features: np.ndarray, source: str | Path = "features", dim: int | None = None) -> None:
    """Refuse empty sets, wrong dimension, NaN/inf and zero-norm rows (row numbers named)."""
    if features.ndim != 2:
        raise DataError(source, f"expected a 2-D [N, D] array, found shape {features.shape}")
    if features.shape[0] == 0:
        raise DataError(source, "empty feature set (0 rows)")
    if dim is not None and features.shape[1] != dim:
        raise DataError(source, f"expected {dim} feature columns, found {features.shape[1]}")
    bad_rows = []
    norms = np.empty(features.shape[0], dtype=np.float64)
    for start in range(0, features.shape[0], 65536):
        block = np.asarray(features[start : start + 65536], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad_rows = (np.flatnonzero(~finite) + start)[:5].tolist()
            raise DataError(source, f"NaN or infinite values in rows {bad_rows} (first 5 shown)")
        norms[start : start + len(block)] = np.linalg.norm(block, axis=1)
    zero = np.flatnonzero(norms < 1e-12)
    if len(zero):
        raise DataError(source, f"zero-norm rows {zero[:5].tolist()} (first 5 shown) cannot be normalised")


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Return a float32 copy with unit-norm rows."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
