"""Decoding and resizing face images: RGB uint8 HWC numpy arrays everywhere.

JPEG goes through libjpeg-turbo by simplejpeg (about twice Pillow's speed on 112-px faces) in strict
mode, which raises on a truncated or damaged file (OpenCV's decoder silently returns a partly grey
image for a truncated JPEG). A JPEG simplejpeg refuses is retried with Pillow, which decodes what
libjpeg only warned about (e.g. extraneous bytes before a marker) and refuses truncated files too; other
formats (PNG, BMP, ...) go through Pillow. Pillow and OpenCV are imported only when needed, so the
JPEG path runs with numpy and simplejpeg alone.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import simplejpeg

from semiface.errors import DataError

JPEG_SIGNATURE = b"\xff\xd8\xff"  # SOI marker, then the first segment's marker


def is_jpeg(data: bytes) -> bool:
    """Whether encoded bytes start like a JPEG file."""
    return data[:3] == JPEG_SIGNATURE


def decode_image(data: bytes, source: str | Path) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 [H, W, 3]; DataError naming ``source`` when damaged."""
    if not data:
        raise DataError(source, "empty image file (0 bytes)")
    if is_jpeg(data):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as exc:
            try:
                return _decode_with_pillow(data, source)
            except DataError:
                raise DataError(source, f"corrupt or unreadable image ({exc})") from exc
    return _decode_with_pillow(data, source)


def _decode_with_pillow(data: bytes, source: str | Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # full decode: raises on truncated data
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.array(rgb)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(source, f"corrupt or unreadable image ({exc})") from exc


def read_bytes(path: str | Path) -> bytes:
    """The bytes of one image file; DataError naming it when it is missing or unreadable."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(path, "image file not found") from exc
    except OSError as exc:
        raise DataError(path, f"image file not readable ({exc.strerror})") from exc


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode one image file to RGB uint8 [H, W, 3]."""
    return decode_image(read_bytes(path), path)


def image_format(data: bytes) -> str:
    """File extension (with dot, lower case) matching encoded image bytes, from Pillow's format sniffing."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            name = (image.format or "").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError("image bytes", f"unknown image format ({exc})") from exc
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(name, f".{name}")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (aspect not kept: face crops are already aligned).

    Area averaging when shrinking (no aliasing), bilinear when enlarging.
    """
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    import cv2

    shrink = height * width > size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
