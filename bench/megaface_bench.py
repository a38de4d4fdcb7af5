"""MegaFace identification cost: seconds and peak working memory vs the number of distractors.

Probes: ``--probes`` images of ``--identities`` identities (default 3,530 of 80, MegaFace's FaceScrub
probe set size), each a noisy copy of its identity's random 256-d centre; distractors: random unit
vectors, written to a temporary ``.npy`` and read back as a memory map, as ``features.npy`` is in the
pipeline. Each case runs ``identification_cmc`` (rank 1..10, one distractor-set size) with the given
working-memory budget; with ``--verification`` also ``run_protocol`` (identification plus TAR@FAR
histograms over every probe x distractor score). CPU always, CUDA too when present.

Peak memory: on CPU the peak anonymous resident memory (``RssAnon``: the memory-mapped distractor file
is page cache, not counted) above the level before the case, sampled every 10 ms; on CUDA
``torch.cuda.max_memory_allocated``.

    python -m bench.megaface_bench [--sizes 10K 100K 1M] [--probes 3530] [--max-mib 512]

Prints a table and writes bench/results/megaface_bench.json.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.measure import machine_info
from recognition_eval.__main__ import parse_size
from recognition_eval.identification import identification_cmc
from recognition_eval.plots import size_label
from recognition_eval.protocol import run_protocol
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "megaface_bench.json"
_GENERATE_ROWS = 65536


class PeakAnonMemory:
    """Peak ``RssAnon`` of this process (Linux /proc) while active, sampled every 10 ms.

    psutil's RSS would count the pages of the memory-mapped distractor file, which are page cache
    shared with the OS, not memory the evaluation holds; /proc/self/status separates the two.
    """

    def __init__(self) -> None:
        self.start = self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> PeakAnonMemory:
        self.start = self.peak = self.current()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.current())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def make_probes(n_probes: int, n_identities: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit probes around random identity centres: two probes of one identity score about 1 / (1 + noise^2)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_identities, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    identities = np.arange(n_probes) % n_identities
    probes = centres[identities] + noise * rng.normal(size=(n_probes, dim)) / np.sqrt(dim)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    return probes.astype(np.float32), identities.astype(str)


def write_distractors(path: Path, n: int, dim: int, seed: int) -> np.ndarray:
    """Random unit rows written block by block to an ``.npy``; returned as a read-only memory map."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, n, _GENERATE_ROWS):
        block = rng.normal(size=(min(_GENERATE_ROWS, n - start), dim)).astype(np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def run_case(kind: str, probes, identities, distractors, size: int, device: str, max_bytes: int) -> dict:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakAnonMemory() as memory:
        start = time.perf_counter()
        if kind == "identification":
            result = identification_cmc(probes, identities, distractors, sizes=(size,), device=device,
                                        max_bytes=max_bytes)
            rank1 = float(result.rank1[-1])
        else:
            result = run_protocol(probes, identities, distractors, sizes=(size,), device=device, max_bytes=max_bytes)
            rank1 = float(result.identification.rank1[-1])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "case": kind, "device": device, "probes": len(probes), "distractors": size,
        "seconds": round(seconds, 2), "distractors_per_s": round(size / seconds),
        "peak_added_mib": round(memory.added_mib, 1), "peak_gpu_mib": None if gpu is None else round(gpu, 1),
        "rank1": round(rank1, 4),
    }


def format_row(r: dict) -> str:
    gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
    return (f"{r['case']:<14} {r['device']:<6} {r['probes']:>6} {size_label(r['distractors']):>6} "
            f"{r['seconds']:>9.2f} {r['distractors_per_s']:>10,} {r['peak_added_mib']:>12.0f} {gpu:>8} "
            f"{100 * r['rank1']:>7.2f}")


HEADER = (f"{'case':<14} {'device':<6} {'probes':>6} {'D':>6} {'seconds':>9} {'distr./s':>10} "
          f"{'+RAM MiB':>12} {'GPU MiB':>8} {'rank-1%':>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--probes", type=int, default=3530)
    parser.add_argument("--identities", type=int, default=80)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--noise", type=float, default=1.5, help="probe spread around its identity centre")
    parser.add_argument("--max-mib", type=int, default=512, help="working-memory budget of the scoring blocks")
    parser.add_argument("--verification", action="store_true", help="also time the full protocol (TAR@FAR)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    kinds = ["identification"] + (["full protocol"] if args.verification else [])
    probes, identities = make_probes(args.probes, args.identities, args.dim, args.noise, seed=0)
    rows = []
    print(HEADER)
    print("-" * len(HEADER))
    with tempfile.TemporaryDirectory(prefix="megaface_bench.") as tmp:
        distractors = write_distractors(Path(tmp) / "distractors.npy", max(args.sizes), args.dim, seed=1)
        for device in devices:
            for kind in kinds:
                for size in sorted(args.sizes):
                    rows.append(run_case(kind, probes, identities, distractors, size, device, args.max_mib * 2**20))
                    print(format_row(rows[-1]), flush=True)
        del distractors
    machine = machine_info()
    save_json(args.out, {"machine": machine, "max_mib": args.max_mib, "identities": args.identities,
                         "dim": args.dim, "noise": args.noise, "results": rows})
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
