"""Model files and training checkpoints; a checkpoint has an identity: what was trained on, and with which settings.

A checkpoint is ``{"format": kind, "identity": {...}, **state}``, written atomically (temp file +
rename). Resuming reads it back and refuses, naming what differs, when its identity is not the one
wanted: another data fingerprint, other training settings, another feature dimension. Settings
that change how a run executes and not what it computes (device, batch sizes of inference,
partition and threshold choices) are left out of the identity by the trainer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiface.atomic import atomic_open
from semiface.errors import ConfigError, DataError


def data_fingerprint(*arrays: np.ndarray) -> str:
    """A hash of the arrays' bytes (features, labels): another labelled set is another run."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save_model_file(path: str | Path, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with its ``kind`` tag to ``path`` atomically (temp file + rename)."""
    # To a file object, not the temporary's path: torch names the archive inside the file after the path
    # (a random temporary name), and the same model would not be the same bytes twice.
    with atomic_open(path) as handle:
        torch.save({"format": kind, **payload}, handle)
    return Path(path)


def load_model_file(path: str | Path, kind: str, what: str) -> dict[str, Any]:
    """Read a file written by ``save_model_file`` for ``kind``; DataError naming the file and the
    problem when it is missing, unreadable or of another kind (``what`` names the model in messages)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a truncated or foreign file
        raise DataError(path, f"not a readable {what} model ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != kind:
        raise DataError(path, f"not a {what} model file (format {kind!r} expected)")
    return payload


def save_training_state(path: str | Path, kind: str, identity: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``state`` with its ``kind`` tag and ``identity`` to ``path`` atomically."""
    return save_model_file(path, kind, {"identity": identity, **state})


def load_training_state(
    path: str | Path, kind: str, identity: dict[str, Any], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint of ``kind`` written for ``identity``; DataError when it is unreadable or of
    another kind, ConfigError naming every difference when it belongs to another run."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a truncated or foreign file
        raise DataError(path, f"not a readable training checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != kind:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DataError(path, f"not a {kind} checkpoint (format {found!r})")
    differences = identity_differences(payload.get("identity", {}), identity)
    if differences:
        raise ConfigError(f"{path}: checkpoint belongs to another run ({'; '.join(differences)}); "
                          "use another checkpoint path or remove it to start afresh")
    return payload


def identity_differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between two identities: nested dicts (settings) field by field, the rest as values."""
    differences = []
    for key in sorted(set(found) | set(wanted)):
        there, here = found.get(key), wanted.get(key)
        if isinstance(there, dict) and isinstance(here, dict):
            differences += [f"{key}.{d}" for d in identity_differences(there, here)]
        elif there != here:
            shown = "other data" if key == "data" else f"{there!r} there, {here!r} now"
            differences.append(f"{key}: {shown}")
    return differences
