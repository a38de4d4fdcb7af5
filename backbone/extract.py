"""Feature extraction: L2-normalised embeddings with flip test-time augmentation, to a memory-mapped .npy.

Rows are written in manifest order (every row, labelled or not) into ``np.lib.format.open_memmap``
at a temporary path renamed onto ``out_path`` at the end: a failure leaves no partial file, and
the features never have to fit in RAM. Images come through the training data path (``backbone.loader``):
uint8 batches from the workers, JPEGs decoded on the GPU on CUDA (``decode``), the float input made on
the device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from backbone.checkpoint import load_embedder
from semiface.atomic import atomic_path
from semiface.devices import autocast_dtype, resolve_device
from semiface.errors import ConfigError, DataError
from semiface.manifest import read_manifest


def embed_with_flip(model: torch.nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum of the embeddings of the images and their mirror images, L2-normalised, float32."""
    device = next(model.parameters()).device
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        # one forward over both views: twice the batch, half the calls
        both = model(torch.cat([images, torch.flip(images, dims=[3])]))
    summed = both[: len(images)].float() + both[len(images):].float()
    return F.normalize(summed, dim=1)


def extract_features(
    checkpoint: Path,
    manifest_path: Path,
    image_root: Path | None,
    out_path: Path,
    batch_size: int = 256,
    device: str = "auto",
    num_workers: int | str = "auto",
    record_file: Path | None = None,
    progress: Callable[[float], None] | None = None,
    decode: str = "auto",
) -> Path:
    """Embed every manifest row with the model of ``checkpoint``; write float32 [N, D] to ``out_path``.

    ``num_workers``: data-loading processes (``auto``: ``backbone.loader.resolve_workers``); ``decode``:
    where JPEGs are decoded (``backbone.model_input``). ``progress`` gets the percentage of rows done
    after each batch."""
    # the data layer, imported where needed (embed_with_flip runs without it)
    from backbone.data.dataset import manifest_images
    from backbone.loader import eval_loader
    from backbone.model_input import device_batches

    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    out_path = Path(out_path)
    if out_path.suffix != ".npy":
        raise ConfigError(f"out_path: {out_path} must end in .npy")
    torch_device = resolve_device(device)
    model = load_embedder(checkpoint, torch_device)
    manifest = read_manifest(manifest_path)
    if len(manifest) == 0:
        raise DataError(manifest_path, "manifest has no rows to extract")
    size = model.config.image_size
    loader = eval_loader(manifest_images(manifest, image_root, record_file), manifest["label"].to_numpy(), size,
                         batch_size, num_workers, decode, torch_device)
    amp_dtype = autocast_dtype(torch_device)
    with atomic_path(out_path) as tmp:
        features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                             shape=(len(manifest), model.config.embedding_dim))
        start = 0
        with torch.inference_mode():
            for _, images in tqdm(device_batches(loader, torch_device, size), total=len(loader), desc="extract",
                                  file=sys.stderr, leave=False):
                features[start : start + len(images)] = embed_with_flip(model, images, amp_dtype).cpu().numpy()
                start += len(images)
                if progress is not None:
                    progress(100.0 * start / len(manifest))
        features.flush()
        del features  # close the map before the rename
    return out_path
