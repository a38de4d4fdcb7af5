"""Backbone checkpoints: one ``.pt`` dict, written atomically, read with ``weights_only=True``.

Keys: ``format``, ``model_config`` (dict of :class:`ModelConfig`), ``model`` (embedder state_dict),
``num_classes``, ``head_classes`` (classes per margin head: one entry, or labelled and pseudo counts
for two-head training), ``margin`` (class-centre state_dict of the head or heads), ``epoch``, ``step``,
``finished``; epoch
checkpoints add the optimizer, grad-scaler and RNG states needed for an exact resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backbone.model import FaceEmbedder, ModelConfig, build_model
from semiface.errors import ConfigError, DataError
from semiface.training.checkpoints import load_model_file, save_model_file

CHECKPOINT_FORMAT = "semiface.backbone/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically."""
    return save_model_file(path, CHECKPOINT_FORMAT, payload)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; errors name the file and the problem."""
    return load_model_file(path, CHECKPOINT_FORMAT, "semiface backbone")


def checkpoint_model_config(payload: dict[str, Any], source: str | Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(dict(payload["model_config"]))
    except (KeyError, TypeError, ConfigError) as exc:
        raise DataError(source, f"checkpoint has no valid model config ({exc})") from exc


def load_embedder_state(model: FaceEmbedder, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load an embedder state_dict strictly; a mismatch is reported as a wrong architecture."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"{source}: weights do not fit model {model.config.trunk!r} at {model.config.image_size}px "
            f"({str(exc).splitlines()[0]})"
        ) from exc


def require_same_architecture(expected: ModelConfig, found: ModelConfig, source: str | Path) -> None:
    """Refuse a checkpoint built for another trunk, input size, embedding size or head."""
    fields = ("trunk", "image_size", "embedding_dim", "pooling", "trunk_kwargs")
    diffs = [f"{f}: checkpoint {getattr(found, f)!r}, config {getattr(expected, f)!r}"
             for f in fields if getattr(found, f) != getattr(expected, f)]
    if diffs:
        raise ConfigError(f"{source}: checkpoint is from a different architecture ({'; '.join(diffs)})")


def load_embedder(path: str | Path, device: torch.device | str = "cpu") -> FaceEmbedder:
    """Rebuild the embedding model stored in a checkpoint, in eval mode, on ``device``."""
    payload = load_checkpoint(path)
    model = build_model(checkpoint_model_config(payload, path), device)
    load_embedder_state(model, payload["model"], path)
    return model.eval()
