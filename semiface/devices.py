"""Device selection: ``auto`` picks CUDA when present, else CPU, and says so loudly when the system
has an NVIDIA GPU that torch cannot use (a driver older than torch's CUDA build needs)."""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import warnings
from pathlib import Path

import torch

from semiface.errors import ConfigError

log = logging.getLogger(__name__)

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
# Oldest Linux driver of each CUDA major version (NVIDIA's compatibility table).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}


def nvidia_driver_version(path: Path = NVIDIA_DRIVER_FILE) -> str | None:
    """The loaded NVIDIA kernel driver's version (e.g. ``"570.86.15"``), None when there is none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else "unknown"


def cuda_problem() -> str | None:
    """Why torch cannot use a GPU this machine shows, or None (no NVIDIA driver, or CUDA works)."""
    return explain_cuda_problem(nvidia_driver_version(), torch.version.cuda, torch.cuda.is_available())


def explain_cuda_problem(driver: str | None, cuda_build: str | None, available: bool) -> str | None:
    """Why torch (built for CUDA ``cuda_build``, None = CPU-only) cannot use NVIDIA driver ``driver``."""
    if driver is None or available:
        return None
    if cuda_build is None:
        return (f"an NVIDIA driver ({driver}) is loaded but torch {torch.__version__} is a CPU-only build: "
                "install a CUDA build of torch")
    major = int(cuda_build.split(".")[0])
    needed = MIN_DRIVER.get(major)
    driver_major = int(driver.split(".")[0]) if driver[0].isdigit() else None
    if needed and driver_major is not None and driver_major < needed:
        return (f"NVIDIA driver {driver} is older than torch {torch.__version__}'s CUDA {cuda_build} needs "
                f"(driver >= {needed}): update the driver, or install a torch build for the driver's CUDA version")
    return f"an NVIDIA driver ({driver}) is loaded but torch (CUDA {cuda_build}) sees no usable GPU (CUDA_VISIBLE_DEVICES? device busy?)"


def where_am_i() -> str:
    """This host, torch's build and the GPUs it is allowed to see: what a "no GPU here" message names."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"host {socket.gethostname()} (torch {torch.__version__}, {build}; CUDA_VISIBLE_DEVICES {shown})"


@functools.cache
def _warn_cpu_fallback(problem: str) -> None:
    message = f"device=auto falls back to the CPU although this machine has an NVIDIA GPU: {problem}"
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` into a torch.device, checking it exists."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        problem = cuda_problem()
        if problem:
            _warn_cpu_fallback(problem)
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device: unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {spec!r} asked for but CUDA is not available on {where_am_i()}: "
                          f"{cuda_problem() or 'no NVIDIA driver is loaded'}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {spec!r} asked for but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype to use on ``device`` (bf16 where supported, else fp16), None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device`` (``autocast_dtype`` / ``inference_dtype``); a disabled one when None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# Inference precision of the clustering transformers: "auto" = autocast_dtype's (reduced on CUDA, float32 on
# the CPU), "float32" = never reduced, "bfloat16" = bf16 autocast on any device.
INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")


def inference_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of inference on ``device`` for ``precision`` (``INFERENCE_PRECISIONS``), None for
    float32. bf16 on a CPU pays only with native bf16 instructions (AVX512-BF16 or AMX): without them a
    warning says it will be slower, not faster."""
    if precision == "auto":
        return autocast_dtype(device)
    if precision == "float32":
        return None
    if precision != "bfloat16":
        raise ConfigError(f"inference_precision: unknown {precision!r} (use {', '.join(INFERENCE_PRECISIONS)})")
    if device.type == "cpu" and not cpu_has_native_bf16():
        _warn_slow_bf16()
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles), as torch reports them."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


@functools.cache
def _warn_slow_bf16() -> None:
    log.warning("inference_precision='bfloat16' on a CPU without bf16 instructions (AVX512-BF16 / AMX): torch "
                "emulates them, inference will be slower than float32")
