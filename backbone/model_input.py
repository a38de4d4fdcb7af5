"""The model's input, made on the device from the uint8 batches the data-loading workers hand over.

A worker hands over an :class:`ImageBatch`: the rows it decoded as uint8 pixels, **NHWC** (the layout
decoders write, so the worker never transposes), and, on the GPU decode path, the rows it left as JPEG
bytes; with each row's label, loss weight, index and flip flag. :func:`model_input` makes the float32
input of the model on the device: it decodes the JPEG rows there (``torchvision.io.decode_jpeg``, nvjpeg
on CUDA; the same batched code on the CPU), resizes them to the model's size if needed, mirrors the
flagged rows, and maps [0, 255] to [-1, 1] (:func:`normalise`, the one place where that happens:
training, extraction, head imprinting and the benchmarks all go through it). The result is NCHW,
channels_last in memory on CUDA (as the trunk runs there), contiguous on the CPU.

:func:`device_batches` walks a loader and makes each batch's input; on CUDA it makes the next batch's
(copy, decode, flip, normalise) on a side stream while the current batch trains.

``decode`` (training and extraction): ``auto`` decodes JPEGs on the device when it is CUDA and in the
workers otherwise; ``cpu`` always in the workers; ``device`` always on the device, the CPU included
(what the tests use to run the GPU path's code here).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from semiface.errors import ConfigError, DataError

DECODES = ("auto", "cpu", "device")


def decode_on_device(decode: str, device: torch.device) -> bool:
    """Whether ``decode`` leaves JPEGs to the device (``auto``: on CUDA only)."""
    if decode not in DECODES:
        raise ConfigError(f"decode: {decode!r} is not one of {list(DECODES)}")
    return decode == "device" or (decode == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class ImageBatch:
    """One batch as a worker hands it over (a few tensors, so that it travels through shared memory whole)."""

    pixels: torch.Tensor  # uint8 [P, S, S, 3]: the rows decoded in the worker
    pixel_rows: torch.Tensor  # int64 [P]: their positions in the batch
    jpeg_bytes: torch.Tensor  # uint8 [total]: the JPEG files left for the device, end to end
    jpeg_lengths: torch.Tensor  # int64 [J]: the size of each
    jpeg_rows: torch.Tensor  # int64 [J]: their positions in the batch
    jpeg_sources: tuple[str, ...]  # how errors name each JPEG (its file, or record file, key and offset)
    labels: torch.Tensor  # int64 [B]
    weights: torch.Tensor  # float32 [B]: loss weights
    index: torch.Tensor  # int64 [B]: each row's index in the data set
    flip: torch.Tensor  # bool [B]: mirror on the device (the flip recipe)

    def __len__(self) -> int:
        return len(self.labels)

    def jpegs(self) -> list[torch.Tensor]:
        """The JPEG files left for the device, one 1-D uint8 tensor (a view) each."""
        return list(torch.split(self.jpeg_bytes, self.jpeg_lengths.tolist())) if len(self.jpeg_lengths) else []

    def pin_memory(self) -> ImageBatch:
        """Page-locked copies, for asynchronous copies to the GPU (called by the DataLoader's pin thread)."""
        tensors = ("pixels", "jpeg_bytes", "labels", "weights", "flip")
        return replace(self, **{name: getattr(self, name).pin_memory() for name in tensors})


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (any strides) in [0, 255] -> float32 in [-1, 1]: channels_last on CUDA, contiguous elsewhere
    (the layout is set on the uint8 tensor, a quarter of the bytes to move)."""
    layout = torch.channels_last if images.is_cuda else torch.contiguous_format
    return images.contiguous(memory_format=layout).float().div_(127.5).sub_(1.0)


def model_input(batch: ImageBatch, device: torch.device, image_size: int) -> torch.Tensor:
    """float32 [B, 3, S, S] in [-1, 1] on ``device``: JPEG rows decoded there, flagged rows mirrored."""
    pixels = batch.pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)  # a view: NCHW, channels_last strides
    if len(batch.jpeg_rows) == 0:
        images = pixels  # every row decoded by the worker, in order
    else:
        images = torch.empty((len(batch), 3, image_size, image_size), dtype=torch.uint8, device=device)
        if len(batch.pixel_rows):
            images[batch.pixel_rows.to(device)] = pixels
        images[batch.jpeg_rows.to(device)] = decode_jpegs(batch.jpegs(), batch.jpeg_sources, device, image_size)
    if bool(batch.flip.any()):  # a host tensor: no device sync
        flip = batch.flip.to(device, non_blocking=True)[:, None, None, None]
        images = torch.where(flip, images.flip(3), images)
    return normalise(images)


def decode_jpegs(jpegs: list[torch.Tensor], sources: tuple[str, ...], device: torch.device,
                 image_size: int) -> torch.Tensor:
    """uint8 [J, 3, S, S] on ``device`` from JPEG files (one batched call). When the batch fails, each file
    is decoded alone, and one the device refuses is decoded on the CPU (simplejpeg, then Pillow), which
    raises DataError naming it when it is damaged."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = [_decode_one(data, source, device) for data, source in zip(jpegs, sources, strict=True)]
    return torch.stack([_resize(image, image_size) for image in decoded])


def _decode_one(data: torch.Tensor, source: str, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    from backbone.data.images import decode_image

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        try:
            image = decode_image(data.numpy().tobytes(), source)
        except DataError as damaged:
            raise DataError(source, f"{damaged.problem}; the {device.type} decoder said: {exc}") from exc
        return torch.from_numpy(image).permute(2, 0, 1).to(device)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 CHW to ``size`` x ``size``, as near as torch comes to the CPU path's OpenCV resize: by an
    integer factor, area averaging (the same pixels); otherwise bilinear, antialiased when shrinking (1-2
    levels from OpenCV's area averaging on average, more on sharp edges). Aligned face sets (MS1M at
    112 px) need no resize."""
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image
    if height % size == 0 and width % size == 0:
        out = F.interpolate(image[None].float(), size=(size, size), mode="area")
    else:
        out = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=height * width > size * size)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def device_batches(batches: Iterable[ImageBatch], device: torch.device,
                   image_size: int) -> Iterator[tuple[ImageBatch, torch.Tensor]]:
    """Each batch with its model input on ``device``. On CUDA the next batch's input is made on a side
    stream while the caller trains on the current one: an event orders each batch's use after its own
    preparation only, and ``record_stream`` keeps the side stream's allocator from reusing the input's
    memory before the main stream is done with it (the other tensors made there stay on that stream)."""
    if device.type != "cuda":
        for batch in batches:
            yield batch, model_input(batch, device, image_size)
        return
    side = torch.cuda.Stream(device)
    pending: tuple[ImageBatch, torch.Tensor, torch.cuda.Event] | None = None
    for batch in batches:
        with torch.cuda.stream(side):
            images = model_input(batch, device, image_size)
            ready = torch.cuda.Event()
            ready.record(side)
        if pending is not None:
            yield _ready(pending, device)
        pending = (batch, images, ready)
    if pending is not None:
        yield _ready(pending, device)


def _ready(pending: tuple[ImageBatch, torch.Tensor, torch.cuda.Event], device: torch.device) -> tuple[ImageBatch, torch.Tensor]:
    batch, images, ready = pending
    main = torch.cuda.current_stream(device)
    main.wait_event(ready)
    images.record_stream(main)
    return batch, images
