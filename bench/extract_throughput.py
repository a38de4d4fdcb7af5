"""End-to-end feature extraction throughput (img/s) and peak memory: ``backbone.extract.extract_features``.

Unlike ``bench/train_throughput.py`` (model step on synthetic tensors), this runs the whole stage on a
generated demo image folder: PNG decoding, resizing, batching, flip-TTA forward passes and writes into the
memory-mapped ``.npy``. Cases: timm's resnet50 and IR-50 (``iresnet50``) at 112x112 and the demo trunk, or
the trunks named by ``--trunk``, on the CPU and, when present, on CUDA (bf16/fp16 autocast, channels_last).
Weights are randomly initialised (speed does not depend on them). Beside img/s: GMACs per image of one
forward pass (``backbone.macs``; flip TTA runs two).
Peak memory: process RSS sampled every 10 ms (above the RSS before the call, i.e. what extraction adds),
and ``torch.cuda.max_memory_allocated`` on CUDA.

    python -m bench.extract_throughput [--trunk iresnet50 --trunk resnet50] [--image-size 112]
                                       [--images 512] [--batch 64] [--workers 0]

Prints a table and writes bench/results/extract_throughput.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backbone.checkpoint import save_checkpoint
from backbone.data.demo_faces import DemoConfig, generate_demo_dataset
from backbone.extract import extract_features
from backbone.macs import gmacs_per_image
from backbone.model import DEMO_MODEL, ModelConfig, build_model
from bench.measure import PeakRss, machine_info
from semiface.atomic import save_json
from semiface.devices import autocast_dtype
from semiface.manifest import read_manifest, write_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "extract_throughput.json"
CASES = [ModelConfig(trunk="resnet50", image_size=112), ModelConfig(trunk="iresnet50", image_size=112), DEMO_MODEL]


def demo_folder(folder: Path, n_images: int, image_size: int) -> tuple[Path, Path]:
    """Demo images in ``folder/faces``; manifests of ``n_images`` rows and of 16 rows (the warm-up)."""
    per_id = 8
    config = DemoConfig(n_labelled_ids=-(-n_images // per_id), n_unlabelled_ids=0, n_probe_ids=0,
                        n_distractor_ids=0, images_per_id=per_id, image_size=image_size)
    frame = read_manifest(generate_demo_dataset(folder / "faces", config))
    return (write_manifest(frame.iloc[:n_images], folder / f"manifest_{n_images}.parquet"),
            write_manifest(frame.iloc[:16], folder / "manifest_warmup.parquet"))


def random_checkpoint(config: ModelConfig, target: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(config)
    return save_checkpoint(target, {"model_config": config.to_dict(), "model": model.state_dict(), "num_classes": 2})


def run_case(config: ModelConfig, device: torch.device, manifest: Path, warmup: Path, folder: Path,
             batch: int, workers: int) -> dict:
    checkpoint = random_checkpoint(config, folder / f"{config.trunk}.pt")
    root = manifest.parent / "faces"
    extract_features(checkpoint, warmup, root, folder / "warmup.npy", batch, device.type, workers)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = folder / f"{config.trunk}_{device.type}.npy"
    with PeakRss() as rss:
        baseline = rss.peak
        start = time.perf_counter()
        extract_features(checkpoint, manifest, root, out, batch, device.type, workers)
        seconds = time.perf_counter() - start
    features = np.load(out, mmap_mode="r")
    peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "trunk": config.trunk, "image_size": config.image_size, "device": device.type,
        "precision": str(autocast_dtype(device) or torch.float32).replace("torch.", ""), "images": int(features.shape[0]),
        "dim": int(features.shape[1]), "gmacs_per_image": gmacs_per_image(config), "batch": batch, "workers": workers,
        "seconds": seconds,
        "img_per_s": features.shape[0] / seconds, "peak_rss_mib": rss.peak / 2**20,
        "added_rss_mib": (rss.peak - baseline) / 2**20,
        "peak_gpu_mib": None if peak_gpu is None else peak_gpu / 2**20,
    }


def _format(rows: list[dict]) -> str:
    header = (f"{'trunk':<11} {'px':>4} {'device':<6} {'precision':<9} {'GMACs':>7} {'images':>6} {'batch':>5} {'workers':>7} {'img/s':>8} "
              f"{'seconds':>8} {'peak RSS MiB':>12} {'added MiB':>9} {'GPU MiB':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        lines.append(f"{r['trunk']:<11} {r['image_size']:>4} {r['device']:<6} {r['precision']:<9} {r['gmacs_per_image']:>7.3f} "
                     f"{r['images']:>6} {r['batch']:>5} "
                     f"{r['workers']:>7} {r['img_per_s']:>8.1f} {r['seconds']:>8.1f} {r['peak_rss_mib']:>12.0f} "
                     f"{r['added_rss_mib']:>9.0f} {gpu:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trunk", action="append", default=None, metavar="NAME",
                        help="a trunk to measure, by name (repeatable; default: resnet50, iresnet50 and the demo trunk)")
    parser.add_argument("--image-size", type=int, default=112, help="input size of the --trunk cases")
    parser.add_argument("--images", type=int, default=512, help="images extracted per case")
    parser.add_argument("--batch", type=int, default=64, help="batch size on CPU")
    parser.add_argument("--cuda-batch", type=int, default=512, help="batch size on CUDA")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--data", type=Path, default=None, help="folder for the demo images (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    cases = [ModelConfig(trunk=name, image_size=args.image_size) for name in args.trunk] if args.trunk else CASES
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="extract_bench_") as tmp:
        data = args.data or Path(tmp)
        size = max(c.image_size for c in cases)
        manifest, warmup = demo_folder(data, args.images, size)
        rows = []
        for device in devices:
            batch = args.cuda_batch if device.type == "cuda" else args.batch
            for config in cases:
                rows.append(run_case(config, device, manifest, warmup, Path(tmp), batch, args.workers))
                print(_format(rows[-1:]).splitlines()[-1], flush=True)
    machine = machine_info()
    print()
    print(_format(rows))
    save_json(args.out, {"machine": machine, "results": rows})
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
