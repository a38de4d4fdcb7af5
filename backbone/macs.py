"""Multiply-accumulates of the embedding model: the compute a trunk costs per image, beside img/s in the benches.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` over one real forward pass (convolutions
and matrix products, 2 FLOPs per MAC; normalisation, activations and additions are not counted,
as in the usual GMACs figures of model papers). Weights and device do not change the count.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from backbone.model import FaceEmbedder, ModelConfig


def gmacs_per_image(config: ModelConfig) -> float:
    """Billions of multiply-accumulates of one forward pass (trunk + embedding head) of one image at
    ``config.image_size``: e.g. about 6.3 for ``iresnet50`` and 1.1 for timm's ``resnet50`` at 112 px.
    The model is built on the CPU for the count; a training step costs about three times this."""
    model = FaceEmbedder(config).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, config.image_size, config.image_size))
    return counter.get_total_flops() / 2 / 1e9
