"""Data-path throughput (img/s per worker and in total) of training and extraction, from a RecordIO of JPEGs.

Reads a generated InsightFace RecordIO of 112-px JPEG faces (the demo face generator, JPEG q95, packed with
``write_insightface_rec``; generated into ``--data`` when absent, never committed) through the real loader
(``backbone.loader``) for one full epoch per case after a warm-up epoch, for each decode mode and recipe:

* ``today``: the data path of main before this loader (Pillow decode, the albumentations pipeline ending in
  float32 normalisation at aug_strength 0.5, every transform reseeded per sample, float32 collate), run from a
  ``git archive`` of ``--baseline-commit`` in a child process: main's own code, not a re-creation;
* ``flip`` / ``albumentations`` (training recipes) and ``eval`` (extraction: resize only), each with
  ``decode=cpu`` (workers decode with libjpeg-turbo) and ``decode=device`` (workers only read the JPEG bytes).

A worker's img/s is the batches it hands over; the work left for the device (decoding in ``device`` mode,
flips, float conversion and normalisation) is timed apart, on this machine's CPU, as "device stage" ms per
image: on a GPU that stage runs on the GPU (not yet measured there). Files were just written, so they are
read from the page cache: this measures the data path, not the disk. With ``--lfw`` (when ../shared/data/lfw
exists) the same cases also run on LFW's real faces resized to 112 px and re-encoded as JPEG q95.

    python -m bench.loader_throughput [--images 5120] [--workers 0 1 2] [--batch 512] [--data DIR] [--lfw]

Prints a table and writes bench/results/loader_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from backbone.data.dataset import manifest_images
from backbone.data.demo_faces import DemoConfig, face_layers, identity_face, identity_view, render_face
from backbone.data.recordio import record_manifest, write_insightface_rec
from backbone.distributed import Distributed
from backbone.loader import eval_loader, make_loader
from backbone.model_input import model_input
from backbone.train_config import TrainConfig
from backbone.training_rows import select_training_rows
from bench.measure import machine_info
from semiface.atomic import save_json
from semiface.manifest import read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "loader_throughput.json"
SHARED_LFW = ROOT.parent / "shared" / "data" / "lfw"
# The last commit of main before this loader: its data path is the "today" row.
BASELINE_COMMIT = "8128867"
IMAGE_SIZE = 112
PER_ID = 10

# Runs in a child process with main's old tree first on sys.path: its make_loader, one epoch per line.
_TODAY_DRIVER = """
import json, sys, time
from pathlib import Path
import torch
from backbone.distributed import Distributed
from backbone.loader import make_loader
from backbone.train_config import TrainConfig
from backbone.training_rows import select_training_rows
from semiface.manifest import read_manifest
rec, manifest, workers, batch, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
config = TrainConfig(image_size=112, aug_strength=0.5, num_workers=workers, batch_size=batch, device="cpu", verbose=False)
rows = select_training_rows(read_manifest(manifest), manifest)
data, sampler, loader = make_loader(config, rows, None, Path(rec), Distributed(), batch, torch.device("cpu"))
rates = []
for epoch in range(epochs):
    sampler.set_epoch(epoch)
    data.epoch = epoch
    start = time.perf_counter()
    seen = sum(len(labels) for _, labels, _ in loader)
    rates.append(seen / (time.perf_counter() - start))
print(json.dumps(rates))
"""


def _jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def demo_record(folder: Path, n_images: int) -> tuple[Path, Path]:
    """A RecordIO of ``n_images`` demo faces (112 px, JPEG q95, 10 a person) and its manifest; reused when there."""
    folder = folder / f"demo_{n_images}"
    rec, manifest = folder / "train.rec", folder / "train.parquet"
    if rec.is_file() and manifest.is_file():
        return rec, manifest
    config = DemoConfig(image_size=IMAGE_SIZE)
    n_ids = -(-n_images // PER_ID)

    def images():
        for identity in range(n_ids):
            face = identity_face(config, identity)
            layers = face_layers(face, IMAGE_SIZE)
            for k in range(PER_ID):
                yield _jpeg(render_face(face, identity_view(config, identity, k), IMAGE_SIZE, layers))

    labels = np.repeat(np.arange(n_ids), PER_ID)
    folder.mkdir(parents=True, exist_ok=True)
    write_insightface_rec(rec, labels, images(), image_shape=(IMAGE_SIZE, IMAGE_SIZE))
    return rec, write_manifest(record_manifest(rec), manifest)


def lfw_record(folder: Path, n_images: int) -> tuple[Path, Path] | None:
    """LFW's first ``n_images`` faces resized to 112 px (area) and re-encoded JPEG q95; None without LFW."""
    import cv2

    from backbone.data.folder import scan_image_folder
    from backbone.data.images import read_image

    if not SHARED_LFW.is_dir():
        return None
    folder = folder / f"lfw_{n_images}"
    rec, manifest = folder / "train.rec", folder / "train.parquet"
    if rec.is_file() and manifest.is_file():
        return rec, manifest
    frame = scan_image_folder(SHARED_LFW, verify=False).head(n_images)
    frame = frame.assign(label=pd.factorize(frame["label"])[0])
    folder.mkdir(parents=True, exist_ok=True)
    faces = (cv2.resize(read_image(SHARED_LFW / p), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
             for p in frame["path"])
    write_insightface_rec(rec, frame["label"], map(_jpeg, faces), image_shape=(IMAGE_SIZE, IMAGE_SIZE))
    return rec, write_manifest(record_manifest(rec), manifest)


def baseline_tree(commit: str, folder: Path) -> Path | None:
    """``backbone`` and ``semiface`` of ``commit`` exported under ``folder``; None when git cannot (no history)."""
    target = folder / f"baseline_{commit}"
    if (target / "backbone" / "loader.py").is_file():
        return target
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "backbone", "semiface"],
                                 check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"today's path not measured: git archive {commit} failed ({exc})", file=sys.stderr)
        return None
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def today_rate(tree: Path, rec: Path, manifest: Path, workers: int, batch: int) -> float:
    """img/s of main's old training loader (second epoch: the first warms the page cache and imports)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _TODAY_DRIVER, str(rec), str(manifest), str(workers), str(batch), "2"],
                         check=True, capture_output=True, text=True, env=env, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])[-1]


# (case name, recipe, decode): the training recipes, then extraction's read path
CASES = [("flip, cpu decode", "flip", "cpu"), ("flip, device decode", "flip", "device"),
         ("albumentations 0.5, cpu decode", "albumentations", "cpu"),
         ("eval, cpu decode", "eval", "cpu"), ("eval, device decode", "eval", "device")]
CPU = torch.device("cpu")


def _loader(recipe: str, decode: str, rec: Path, manifest: Path, workers: int, batch: int):
    if recipe == "eval":
        frame = read_manifest(manifest)
        return eval_loader(manifest_images(frame, None, rec), frame["label"].to_numpy(), IMAGE_SIZE, batch, workers,
                           decode, CPU)
    config = TrainConfig(image_size=IMAGE_SIZE, augment=recipe, aug_strength=0.5, num_workers=workers,
                         decode=decode, batch_size=batch, device="cpu", verbose=False)
    rows = select_training_rows(read_manifest(manifest), manifest)
    return make_loader(config, rows, None, rec, Distributed(), batch, CPU)[2]


def loader_rate(recipe: str, decode: str, rec: Path, manifest: Path, workers: int, batch: int) -> float:
    """img/s the loader hands over (second epoch: the first starts the workers and warms the page cache)."""
    loader = _loader(recipe, decode, rec, manifest, workers, batch)
    rate = 0.0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        seen = sum(len(b) for b in loader)
        rate = seen / (time.perf_counter() - start)
    return rate


def device_stage_ms(recipe: str, decode: str, rec: Path, manifest: Path, batch: int, batches: int = 4) -> float:
    """ms per image of ``model_input`` on this CPU (decode in ``device`` mode, flips, float conversion)."""
    loader = _loader(recipe, decode, rec, manifest, 0, batch)
    held = [b for b, _ in zip(loader, range(batches), strict=False)]
    model_input(held[0], CPU, IMAGE_SIZE)
    start = time.perf_counter()
    seen = sum(len(model_input(b, CPU, IMAGE_SIZE)) for b in held)
    return 1e3 * (time.perf_counter() - start) / seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5120, help="generated faces in the RecordIO (>= 5,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=512, help="images per batch (the ms1m deployment's)")
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated RecordIO (kept; default: temp)")
    parser.add_argument("--lfw", action="store_true", help="also LFW's real faces (../shared/data/lfw), JPEG q95")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT, help="main's commit whose loader is 'today'")
    parser.add_argument("--only", nargs="+", default=None, help="case names to run (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loader_bench.") as tmp:
        folder = args.data or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sources = [("demo faces", *demo_record(folder, args.images))]
        if args.lfw:
            lfw = lfw_record(folder, args.images)
            if lfw is not None:
                sources.append(("LFW", *lfw))
        tree = baseline_tree(args.baseline_commit, Path(tmp))
        wanted = [c for c in (["today"] + [name for name, _, _ in CASES]) if args.only is None or c in args.only]
        for source, rec, manifest in sources:
            for case in wanted:
                recipe, decode = next(((r, d) for name, r, d in CASES if name == case), (None, None))
                if case == "today" and tree is None:
                    continue
                stage = None if recipe is None else device_stage_ms(recipe, decode, rec, manifest, args.batch)
                for workers in args.workers:
                    rate = (today_rate(tree, rec, manifest, workers, args.batch) if case == "today"
                            else loader_rate(recipe, decode, rec, manifest, workers, args.batch))
                    rows.append({"source": source, "case": case, "workers": workers, "img_per_s": rate,
                                 "img_per_s_per_worker": rate / max(1, workers), "device_stage_cpu_ms": stage})
                    print(f"{source:<11} {case:<31} workers={workers} {rate:>8.1f} img/s", flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["source", "case"], columns="workers", values="img_per_s", sort=False)
    wide.columns = [f"img/s, {w} workers" for w in wide.columns]
    stage = table.groupby(["source", "case"], sort=False)["device_stage_cpu_ms"].first()
    wide["device stage on this CPU, ms/img"] = stage.map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    today = table[table["case"] == "today"].set_index(["source", "workers"])["img_per_s"]
    for workers in args.workers:
        ratio = table.set_index(["source", "workers"]).index.map(lambda k: today.get(k, np.nan))
        table[f"x today, {workers} workers"] = np.where(table["workers"] == workers, table["img_per_s"] / ratio, np.nan)
    speedup = table.groupby(["source", "case"], sort=False)[[f"x today, {w} workers" for w in args.workers]].max()
    print()
    print(f"batch {args.batch}, {args.images} images of {IMAGE_SIZE} px, one epoch (the second) per cell")
    print(wide.join(speedup).to_string(float_format=lambda v: f"{v:.2f}" if v < 100 else f"{v:.0f}"))
    save_json(args.out, {"machine": machine_info(), "batch": args.batch, "images": args.images,
                         "baseline_commit": args.baseline_commit, "results": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
