"""What every benchmark records beside its timings: peak resident memory and the machine it ran on."""

from __future__ import annotations

import gc
import os
import platform
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psutil

T = TypeVar("T")


class PeakRss:
    """Sample this process's resident memory every 10 ms while active (``start``, ``peak`` in bytes)."""

    def __init__(self) -> None:
        self.process, self.start, self.peak, self._stop = psutil.Process(), 0, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def machine_info() -> dict[str, object]:
    """CPU, core count, torch threads and version, GPU name (None without CUDA)."""
    import torch  # here, not at the top: benchmarks of faiss/Infomap alone need not load torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_measured(work: Callable[[], T]) -> tuple[T, float, float]:
    """``work()`` after a garbage collection: (its result, seconds, peak MB of resident memory over the start)."""
    gc.collect()
    with PeakRss() as rss:
        started = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - started
    return result, seconds, (rss.peak - rss.start) / 2**20


def reference_seconds(repeats: int = 3, passes: int = 10) -> float:
    """Seconds of a fixed torch workload (a small transformer encoder layer on [256, 64, 64], ``passes``
    forward passes; the best of ``repeats``) with the process's torch threads. This machine's speed drifts
    (a shared VM: the same pass has taken 1.0x to 1.9x within an hour), so timings taken at different
    moments are compared through it."""
    import torch

    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, 0.0, batch_first=True, norm_first=True).eval()
    tokens = torch.randn(256, 64, 64, generator=generator)
    best = float("inf")
    with torch.inference_mode():
        layer(tokens)
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(passes):
                layer(tokens)
            best = min(best, time.perf_counter() - started)
    return best
