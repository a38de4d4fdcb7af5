"""Feature extraction: L2-normalised embeddings with flip test-time augmentation, to a memory-mapped .npy.

Rows are written in manifest order (every row, labelled or not) into ``np.lib.format.open_memmap``
at a temporary path renamed onto ``out_path`` at the end: a failure leaves no partial file, and
the features never have to fit in RAM.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
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
    num_workers: int = 0,
    record_file: Path | None = None,
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Embed every manifest row with the model of ``checkpoint``; write float32 [N, D] to ``out_path``.

    ``progress`` gets the percentage of rows done after each batch."""
    # the data layer and its augmentation stack, imported where needed (embed_with_flip runs without them)
    from backbone.augment import eval_transform
    from backbone.data.dataset import ManifestImageDataset

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
    dataset = ManifestImageDataset(manifest, image_root, transform=eval_transform(model.config.image_size),
                                   record_file=record_file)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch_device.type == "cuda")
    amp_dtype = autocast_dtype(torch_device)
    with atomic_path(out_path) as tmp:
        features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                             shape=(len(manifest), model.config.embedding_dim))
        start = 0
        with torch.inference_mode():
            for images, _, _ in tqdm(loader, desc="extract", file=sys.stderr, leave=False):
                features[start : start + len(images)] = embed_with_flip(model, images, amp_dtype).cpu().numpy()
                start += len(images)
                if progress is not None:
                    progress(100.0 * start / len(manifest))
        features.flush()
        del features  # close the map before the rename
    return out_path
