"""Training and extraction throughput of the backbone (img/s) with peak memory.

Runs the real training step (``backbone.steps.train_step``: forward, margin loss, backward,
gradient clipping, SGD update) and the real extraction step (``backbone.extract.embed_with_flip``:
flip TTA, so two forward passes per image) on synthetic batches, for timm's resnet50 and IR-50
(``iresnet50``) at 112x112 and the demo trunk, or the trunks named by ``--trunk``, on the CPU and,
when present, on CUDA (bf16/fp16 autocast, channels_last). Data loading is not included. Beside
img/s: GMACs per image (one forward pass, ``backbone.macs``; a training step costs about three
times that). Peak memory: the process RSS sampled during the case on CPU,
``torch.cuda.max_memory_allocated`` on CUDA.

    python -m bench.train_throughput [--trunk iresnet50 --trunk resnet50] [--image-size 112]
                                     [--iters 3] [--batch 32] [--cuda-batch 256]

Prints a table and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from backbone.extract import embed_with_flip
from backbone.macs import gmacs_per_image
from backbone.margin import MarginHead
from backbone.model import DEMO_MODEL, ModelConfig, build_model
from backbone.steps import MarginModel, make_optimizer, train_step
from backbone.train_config import TrainConfig
from bench.measure import PeakRss, machine_info
from semiface.atomic import save_json
from semiface.devices import autocast_dtype

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
CASES = [ModelConfig(trunk="resnet50", image_size=112), ModelConfig(trunk="iresnet50", image_size=112), DEMO_MODEL]
NUM_CLASSES = 1000


def _timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_case(config: ModelConfig, device: torch.device, batch: int, warmup: int, iters: int) -> dict:
    torch.manual_seed(0)
    amp_dtype = autocast_dtype(device)
    embedder = build_model(config, device)
    model = MarginModel(embedder, MarginHead(config.embedding_dim, NUM_CLASSES).to(device))
    optimizer = make_optimizer(TrainConfig(trunk=config.trunk, image_size=config.image_size), model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images = torch.rand(batch, 3, config.image_size, config.image_size) * 2 - 1
    data = (images, torch.randint(0, NUM_CLASSES, (batch,)), torch.ones(batch))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_once() -> None:
        train_step(model, optimizer, scaler, data, device, amp_dtype, grad_clip=5.0)

    def extract_once() -> None:
        embed_with_flip(embedder, images, amp_dtype).cpu()

    with PeakRss() as rss:
        model.train()
        train_seconds = _timed(train_once, warmup, iters, device)
        train_peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        embedder.eval()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            extract_seconds = _timed(extract_once, warmup, iters, device)
        extract_peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "trunk": config.trunk, "image_size": config.image_size, "device": device.type,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "batch": batch, "iters": iters, "gmacs_per_image": gmacs_per_image(config),
        "train_img_per_s": batch * iters / train_seconds,
        "extract_img_per_s": batch * iters / extract_seconds,
        "peak_rss_mib": rss.peak / 2**20,
        "train_peak_gpu_mib": None if train_peak_gpu is None else train_peak_gpu / 2**20,
        "extract_peak_gpu_mib": None if extract_peak_gpu is None else extract_peak_gpu / 2**20,
    }


def _format(rows: list[dict]) -> str:
    header = f"{'trunk':<11} {'px':>4} {'device':<6} {'precision':<9} {'batch':>5} {'GMACs':>7} {'train img/s':>11} " \
             f"{'extract img/s':>13} {'peak RSS MiB':>12} {'GPU train/extract MiB':>21}"
    lines = [header, "-" * len(header)]
    for r in rows:
        gpu = "-" if r["train_peak_gpu_mib"] is None else f"{r['train_peak_gpu_mib']:.0f}/{r['extract_peak_gpu_mib']:.0f}"
        lines.append(f"{r['trunk']:<11} {r['image_size']:>4} {r['device']:<6} {r['precision']:<9} {r['batch']:>5} "
                     f"{r['gmacs_per_image']:>7.3f} {r['train_img_per_s']:>11.1f} {r['extract_img_per_s']:>13.1f} {r['peak_rss_mib']:>12.0f} {gpu:>21}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trunk", action="append", default=None, metavar="NAME",
                        help="a trunk to measure, by name (repeatable; default: resnet50, iresnet50 and the demo trunk)")
    parser.add_argument("--image-size", type=int, default=112, help="input size of the --trunk cases")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32, help="batch size on CPU")
    parser.add_argument("--cuda-batch", type=int, default=256, help="batch size on CUDA")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    cases = [ModelConfig(trunk=name, image_size=args.image_size) for name in args.trunk] if args.trunk else CASES
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        batch = args.cuda_batch if device.type == "cuda" else args.batch
        for config in cases:
            rows.append(run_case(config, device, batch, args.warmup, args.iters))
            print(_format(rows[-1:]).splitlines()[-1], flush=True)
    machine = machine_info()
    print()
    print(_format(rows))
    save_json(args.out, {"machine": machine, "results": rows})
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
