"""Decoding and resizing face images: RGB uint8 HWC numpy arrays everywhere.

Decoding goes through Pillow because it refuses truncated files (OpenCV's decoder silently returns a
partly grey image for a truncated JPEG), so a damaged file is reported instead of trained on.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from semiface.errors import DataError


def decode_image(data: bytes, source: str | Path) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 [H, W, 3]; DataError naming ``source`` when damaged."""
    if not data:
        raise DataError(source, "empty image file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # full decode: raises on truncated data
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.array(rgb)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(source, f"corrupt or unreadable image ({exc})") from exc


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode one image file to RGB uint8 [H, W, 3]."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(path, "image file not found") from exc
    except OSError as exc:
        raise DataError(path, f"image file not readable ({exc.strerror})") from exc
    return decode_image(data, path)


def image_format(data: bytes) -> str:
    """File extension (with dot, lower case) matching encoded image bytes, from Pillow's format sniffing."""
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
    shrink = height * width > size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
