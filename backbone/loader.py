"""The data path of training and extraction: rows -> uint8 batches made whole in worker processes.

A sampler's indices travel as (epoch, index) pairs (:class:`EpochSampler`), so a sample's augmentation
is a function of (seed, epoch, index) (``backbone.augment``) and the workers keep no state: they are
started once (persistent) and each prefetches batches, and an epoch's batches are the same whatever
the worker count and after a resume. A worker builds a whole batch at a time (:class:`FaceBatches`,
``__getitems__``): it reads each row's bytes, decodes JPEGs with libjpeg-turbo (or leaves complete
JPEGs for the device, ``decode``), resizes to the model's size, runs the albumentations recipe when
that is the recipe, and hands over uint8 NHWC pixels, never float (``backbone.model_input`` makes the
model's input on the device). Worker count ``auto``: :func:`resolve_workers`.

Needs torch, numpy and simplejpeg (torchvision for the device decode, albumentations for its recipe
only), so a script on a bare GPU host can drive it with :class:`FaceBatches` and :func:`batch_loader`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

from backbone.augment import AlbumentationsRecipe, flip_flags, resolve_augment, sample_keys
from backbone.data.dataset import Images
from backbone.data.images import decode_image, is_jpeg, resize_square
from backbone.model_input import ImageBatch, decode_on_device
from semiface.errors import ConfigError, DataError

if TYPE_CHECKING:
    from backbone.distributed import Distributed
    from backbone.train_config import TrainConfig
    from backbone.training_rows import TrainingRows

# ``auto`` on CUDA: one worker per CPU of the rank but one (for the rank's own process), at most this
# many: 16 workers decode about 100K 112-px JPEGs a second, far beyond what one GPU trains on.
MAX_AUTO_WORKERS = 16
PREFETCH_BATCHES = 2  # batches each worker keeps ready (torch's default, said here: it sets shared memory use)
_EOI = b"\xff\xd9"  # a JPEG's last marker


class EpochSampler(Sampler):
    """A sampler's indices as (epoch, index) pairs: the epoch travels with each index to the workers."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (and the wrapped sampler's shuffle, when it has one)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(index)) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass(frozen=True)
class LoadFailure:
    """A worker's DataError, handed over in place of its batch and raised again by :class:`BatchLoader`:
    torch re-raises a worker's exception by calling its type with one message string, which
    ``DataError(source, problem)`` does not take, so it would arrive as a RuntimeError."""

    source: str
    problem: str


class FaceBatches(Dataset):
    """Whole batches of rows as :class:`ImageBatch` (fetched by ``__getitems__``: one call a batch).

    ``recipe``: ``eval`` (resize only), ``flip`` (flags for the device) or ``albumentations`` (in the
    worker, at ``strength``). With ``device_decode`` a complete JPEG (one ending in its EOI marker) is
    handed over as bytes; any other image (PNG, a truncated or trailing-garbage JPEG, ...) is decoded
    here, so that a damaged file fails with the CPU decoder's clear error. A missing or damaged image
    raises DataError naming its file, or its record file, key and byte offset.
    """

    def __init__(self, images: Images, labels: np.ndarray, image_size: int, recipe: str = "eval", *,
                 weights: np.ndarray | None = None, strength: float = 0.0, seed: int = 0,
                 device_decode: bool = False) -> None:
        if recipe not in ("eval", "flip", "albumentations"):
            raise ConfigError(f"recipe: {recipe!r} is not one of ['eval', 'flip', 'albumentations']")
        self.images, self.image_size, self.recipe, self.seed = images, image_size, recipe, seed
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.int64)
        self.weights = torch.ones(len(self.labels)) if weights is None else torch.tensor(
            np.asarray(weights), dtype=torch.float32)
        if not len(self.labels) == len(self.weights) == len(images):
            raise DataError("rows", f"{len(images)} images, {len(self.labels)} labels and {len(self.weights)} weights")
        self.augment = AlbumentationsRecipe(image_size, strength) if recipe == "albumentations" else None
        self.device_decode = device_decode

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int]) -> ImageBatch | LoadFailure:
        return self.__getitems__([item])

    def __getitems__(self, items: list[tuple[int, int]]) -> ImageBatch | LoadFailure:
        try:
            return self._batch(items)
        except DataError as exc:
            if get_worker_info() is None:
                raise
            return LoadFailure(exc.source, exc.problem)

    def _batch(self, items: list[tuple[int, int]]) -> ImageBatch:
        epochs, indices = (np.asarray(column, dtype=np.int64) for column in zip(*items, strict=True))
        keys = sample_keys(self.seed, epochs, indices)
        size = self.image_size
        pixels = np.empty((len(items), size, size, 3), dtype=np.uint8)
        pixel_rows: list[int] = []
        jpegs: list[bytes] = []
        jpeg_rows: list[int] = []
        sources: list[str] = []
        for row, (index, key) in enumerate(zip(indices.tolist(), keys.tolist(), strict=True)):
            data = self.images.encoded(index)
            if self.device_decode and is_jpeg(data) and data.rstrip(b"\0").endswith(_EOI):
                jpegs.append(data)
                jpeg_rows.append(row)
                sources.append(str(self.images.source(index)))
                continue
            try:
                image = decode_image(data, "")
            except DataError as exc:
                raise DataError(self.images.source(index), exc.problem) from exc
            image = self.augment(image, key) if self.augment is not None else resize_square(image, size)
            pixels[len(pixel_rows)] = image
            pixel_rows.append(row)
        flip = flip_flags(keys) if self.recipe == "flip" else np.zeros(len(items), dtype=bool)
        index = torch.from_numpy(indices)
        return ImageBatch(
            pixels=torch.from_numpy(pixels[: len(pixel_rows)]),
            pixel_rows=torch.tensor(pixel_rows, dtype=torch.int64),
            jpeg_bytes=torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8) if jpegs
            else torch.empty(0, dtype=torch.uint8),
            jpeg_lengths=torch.tensor([len(j) for j in jpegs], dtype=torch.int64),
            jpeg_rows=torch.tensor(jpeg_rows, dtype=torch.int64),
            jpeg_sources=tuple(sources),
            labels=self.labels[index], weights=self.weights[index], index=index, flip=torch.from_numpy(flip),
        )


def _as_is(batch: ImageBatch | LoadFailure) -> ImageBatch | LoadFailure:
    """The DataLoader's collate step: ``FaceBatches`` already made the batch."""
    return batch


class BatchLoader(DataLoader):
    """A DataLoader of :class:`FaceBatches` that raises a worker's :class:`LoadFailure` as the DataError it was."""

    def __iter__(self) -> Iterator[ImageBatch]:
        for batch in super().__iter__():
            if isinstance(batch, LoadFailure):
                raise DataError(batch.source, batch.problem)
            yield batch


# ----------------------------------------------------------------------------------------------
# Worker count


CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(cpus, quota)) if quota is not None else cpus


def cgroup_cpu_quota(cgroup: Path = CGROUP) -> int | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max``, or v1), rounded up; None when unlimited."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_file).read_text().split()
            if period_file is not None:
                fields.append((cgroup / period_file).read_text().strip())
        except OSError:
            continue
        if fields[0] in ("max", "-1"):
            return None
        return math.ceil(int(fields[0]) / int(fields[1]))
    return None


def resolve_workers(num_workers: int | str, device: torch.device) -> int:
    """Worker processes per rank. An explicit number wins; ``auto`` splits :func:`usable_cpus` between
    the node's ranks (torchrun's ``LOCAL_WORLD_SIZE``), then on CUDA keeps one CPU for the rank's own
    process (at most :data:`MAX_AUTO_WORKERS`), and on the CPU takes half, at most 2: there the model's
    step needs the cores, and one worker decodes thousands of images a second, far more than it trains."""
    if num_workers == "auto":
        per_rank = max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        if device.type == "cuda":
            return min(MAX_AUTO_WORKERS, max(1, per_rank - 1))
        return min(2, per_rank // 2)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers: {num_workers!r} is neither 'auto' nor a count >= 0")
    return num_workers


# ----------------------------------------------------------------------------------------------
# Loaders


def batch_loader(data: FaceBatches, sampler: Sampler, batch_size: int, workers: int, device: torch.device,
                 drop_last: bool = False, persistent: bool = False) -> BatchLoader:
    """A DataLoader of ``data``'s whole batches: ``workers`` processes (kept across epochs when
    ``persistent``), each preparing :data:`PREFETCH_BATCHES` ahead; pinned memory on CUDA."""
    extra = {"persistent_workers": persistent, "prefetch_factor": PREFETCH_BATCHES} if workers > 0 else {}
    return BatchLoader(data, batch_size=batch_size, sampler=EpochSampler(sampler), drop_last=drop_last,
                       num_workers=workers, collate_fn=_as_is, pin_memory=device.type == "cuda", **extra)


def make_loader(
    config: TrainConfig, rows: TrainingRows, image_root: Path | None, record_file: Path | None, world: Distributed,
    per_rank_batch: int, device: torch.device,
) -> tuple[FaceBatches, EpochSampler, BatchLoader]:
    """The training batches of this rank: data set, sampler (``set_epoch`` before each epoch) and loader.
    The recipe is ``config.augment`` resolved on the whole training set's size."""
    from backbone.data.dataset import manifest_images

    recipe = resolve_augment(config.augment, len(rows.labels))
    images = manifest_images(rows.frame, image_root, record_file)
    data = FaceBatches(images, rows.labels, config.image_size, recipe, weights=rows.weights,
                       strength=config.aug_strength, seed=config.seed,
                       device_decode=decode_on_device(config.decode, device))
    shuffle = DistributedSampler(data, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=config.seed)
    loader = batch_loader(data, shuffle, per_rank_batch, resolve_workers(config.num_workers, device), device,
                          drop_last=True, persistent=True)
    return data, loader.sampler, loader


def eval_loader(images: Images, labels: np.ndarray, image_size: int, batch_size: int, num_workers: int | str,
                decode: str, device: torch.device) -> BatchLoader:
    """Every row once, in order, resized only (extraction, head imprinting)."""
    data = FaceBatches(images, labels, image_size, "eval", device_decode=decode_on_device(decode, device))
    return batch_loader(data, SequentialSampler(data), batch_size, resolve_workers(num_workers, device), device)
