"""Atomic writes: write to a temporary file beside the target, then rename over it.

A crash mid-write leaves the previous file (or none) in place, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# mkstemp creates files readable by the owner only; give outputs the permissions of a plain open().
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary keeps the target's suffix (so libraries that infer a format from it work).
    On an exception the temporary is removed and the target is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else "".join(target.suffixes),
        dir=target.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file for writing; it replaces ``target`` when the block succeeds."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def save_npy(target: str | Path, array: np.ndarray) -> Path:
    """Save one array as ``.npy`` atomically."""
    with atomic_open(target) as handle:
        np.save(handle, array)
    return Path(target)


def save_npz(target: str | Path, **arrays: np.ndarray) -> Path:
    """Save several arrays as ``.npz`` atomically."""
    with atomic_open(target) as handle:
        np.savez(handle, **arrays)
    return Path(target)


def save_json(target: str | Path, obj: Any) -> Path:
    """Save JSON (indented, keys in insertion order) atomically."""
    with atomic_open(target, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, default=_json_default)
        handle.write("\n")
    return Path(target)


def save_parquet(target: str | Path, frame: Any) -> Path:
    """Save a pandas DataFrame as parquet atomically."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
