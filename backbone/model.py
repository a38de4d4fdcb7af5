"""Face embedding model: a timm trunk without classifier, then an embedding head to 256-d.

Trunks are named as in timm's registry: any timm model, and the face-recognition IR-ResNets of
``backbone.iresnet`` (``iresnet18/34/50/100``; ``iresnet50`` is ArcFace's IR-50), which importing
this module registers there.

The head follows face-recognition practice (the ArcFace paper's "BN-Dropout-FC-BN" output
layer): ``pooling="flatten"`` normalises the trunk's last feature map with BatchNorm2d and
flattens it, keeping the spatial layout a face crop has; ``pooling="avg"`` uses timm's pooled
features instead (for trunks without a 4-D feature map, e.g. ViTs). Then dropout, a linear
layer to ``embedding_dim`` and BatchNorm1d. Embeddings are returned un-normalised; callers
L2-normalise them (the margin heads and feature extraction do).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from torch import nn

import backbone.iresnet  # noqa: F401  (registers the IR-ResNet trunks in timm's model registry)
from semiface.errors import ConfigError, reject_unknown

POOLINGS = ("flatten", "avg")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the embedding model; stored in every checkpoint."""

    trunk: str = "resnet50"
    image_size: int = 112
    embedding_dim: int = 256
    pooling: str = "flatten"
    dropout: float = 0.0
    trunk_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a hub or local source ("hf-hub:...") is resolved, and checked, when the model is built
        if ":" not in self.trunk and not timm.is_model(self.trunk):
            raise ConfigError(f"ModelConfig.trunk: {self.trunk!r} is not a timm model name nor one of "
                              f"{list(backbone.iresnet.DEPTHS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"ModelConfig.pooling: {self.pooling!r} is not one of {list(POOLINGS)}")
        if self.image_size < 16:
            raise ConfigError(f"ModelConfig.image_size: {self.image_size} is too small (at least 16 pixels)")
        if self.embedding_dim < 1:
            raise ConfigError(f"ModelConfig.embedding_dim: must be positive, got {self.embedding_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig.dropout: must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        reject_unknown(values, {f for f in cls.__dataclass_fields__}, "ModelConfig")
        return cls(**values)


# A trunk small enough to train on a CPU in minutes, used by the demo data and tests.
DEMO_MODEL = ModelConfig(trunk="resnet10t", image_size=64)


class FaceEmbedder(nn.Module):
    """timm trunk + embedding head; ``forward`` maps [B, 3, H, W] images in [-1, 1] to [B, D]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        try:
            self.trunk = timm.create_model(config.trunk, pretrained=False, num_classes=0, **config.trunk_kwargs)
        except RuntimeError as exc:  # timm raises RuntimeError for an unknown model name
            raise ConfigError(f"ModelConfig.trunk: timm cannot build {config.trunk!r} ({exc})") from exc
        except TypeError as exc:
            raise ConfigError(
                f"ModelConfig.trunk_kwargs: {config.trunk!r} does not accept {config.trunk_kwargs} ({exc})"
            ) from exc
        channels, height, width = self._trunk_output_shape()
        self.unused_trunk_parameters = self._freeze_unused_trunk_parameters()
        if config.pooling == "flatten":
            self.head = nn.Sequential(
                nn.BatchNorm2d(channels),
                nn.Dropout(config.dropout),
                nn.Flatten(),
                # no bias: the BatchNorm1d that follows removes any constant offset
                nn.Linear(channels * height * width, config.embedding_dim, bias=False),
                nn.BatchNorm1d(config.embedding_dim),
            )
        else:
            self.head = nn.Sequential(
                nn.BatchNorm1d(channels),
                nn.Dropout(config.dropout),
                nn.Linear(channels, config.embedding_dim, bias=False),
                nn.BatchNorm1d(config.embedding_dim),
            )

    def _trunk_output_shape(self) -> tuple[int, int, int]:
        """Probe the trunk once at the configured input size (in eval mode: no BN statistics change)."""
        size = self.config.image_size
        was_training = self.trunk.training
        self.trunk.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size)
            if self.config.pooling == "avg":
                pooled = self.trunk(probe)
                shape = (pooled.shape[1], 1, 1)
            else:
                fmap = self.trunk.forward_features(probe)
                if fmap.ndim != 4:
                    raise ConfigError(
                        f"ModelConfig.pooling: trunk {self.config.trunk!r} gives {fmap.ndim}-D features, "
                        "not a 4-D feature map; use pooling='avg'"
                    )
                shape = tuple(fmap.shape[1:])
        self.trunk.train(was_training)
        return shape  # type: ignore[return-value]

    def _freeze_unused_trunk_parameters(self) -> list[str]:
        """Names of trunk parameters the forward never uses (e.g. a classifier-side conv that
        ``forward_features`` skips), now ``requires_grad=False``. Their gradient is always None, so
        training is unchanged, but DDP would wait for it forever and fail at the second step."""
        was_training = self.trunk.training
        self.trunk.eval()  # no BatchNorm statistics change
        size = self.config.image_size
        probe = torch.zeros(1, 3, size, size)
        out = self.trunk.forward_features(probe) if self.config.pooling == "flatten" else self.trunk(probe)
        out.float().sum().backward()
        unused = [name for name, param in self.trunk.named_parameters() if param.requires_grad and param.grad is None]
        for name, param in self.trunk.named_parameters():
            param.grad = None
            if name in unused:
                param.requires_grad_(False)
        self.trunk.train(was_training)
        return unused

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "flatten":
            return self.head(self.trunk.forward_features(images))
        return self.head(self.trunk(images))


def build_model(config: ModelConfig, device: torch.device | str = "cpu") -> FaceEmbedder:
    """Build the embedding model on ``device`` (channels_last on CUDA, where convolutions run faster)."""
    model = FaceEmbedder(config).to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
