"""Read throughput (images/s, decode included) of ManifestImageDataset through a torch DataLoader.

This is the item-by-item reader (float CHW items; the dlib embedder and tools use it). Training and
extraction read through ``backbone.loader`` (whole uint8 batches): ``bench/loader_throughput.py``.

Sources: an image folder and InsightFace RecordIO holding the same images, on demo faces generated on
the fly (PNG, as the generator writes them; the RecordIO also re-encoded as JPEG q95, the format of
InsightFace's files), and on a slice of the real LFW folder (JPEG) when ../shared/data is present.
Each case reads every image once through ``DataLoader(batch_size=64)`` with the default transform
(resize to --size, float CHW in [-1, 1]); worker start-up is included. Files were just written, so
they are read from the page cache: this measures decoding and the readers, not the disk.

    python -m bench.read_throughput [--images 2000] [--size 112] [--workers 0 1 2]

Prints a table and writes bench/results/read_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from backbone.data.dataset import ManifestImageDataset
from backbone.data.demo_faces import DemoConfig, generate_demo_dataset
from backbone.data.folder import scan_image_folder
from backbone.data.recordio import record_manifest, write_insightface_rec
from semiface.atomic import save_json
from semiface.manifest import read_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "read_throughput.json"
SHARED_LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def images_per_second(dataset: ManifestImageDataset, workers: int, batch: int = 64) -> float:
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    seen = sum(len(labels) for _, labels, _ in loader)
    elapsed = time.perf_counter() - start
    assert seen == len(dataset)
    return seen / elapsed


def to_jpeg(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=95)
        return out.getvalue()


def pack(frame: pd.DataFrame, root: Path, rec_path: Path, encode=None) -> pd.DataFrame:
    """Write the frame's images (grouped by label) to ``rec_path``; return the record manifest."""
    frame = frame.sort_values("label", kind="stable")
    payloads = ((root / p).read_bytes() for p in frame["path"])
    write_insightface_rec(rec_path, frame["label"], map(encode, payloads) if encode else payloads)
    return record_manifest(rec_path)


def sources(work: Path, n_images: int, size: int) -> list[tuple[str, dict]]:
    """(name, ManifestImageDataset kwargs) for each source to measure."""
    per_id = 10
    config = DemoConfig(n_labelled_ids=max(1, n_images // per_id), n_unlabelled_ids=0, n_probe_ids=0,
                        n_distractor_ids=0, images_per_id=per_id, image_size=size, seed=0)
    demo = read_manifest(generate_demo_dataset(work / "demo", config))
    root = work / "demo"
    out = [
        ("demo folder (PNG)", dict(manifest=demo, root=root)),
        ("demo RecordIO (PNG)", dict(manifest=pack(demo, root, work / "png.rec"), root=None,
                                     record_file=work / "png.rec")),
        ("demo RecordIO (JPEG q95)", dict(manifest=pack(demo, root, work / "jpg.rec", to_jpeg), root=None,
                                          record_file=work / "jpg.rec")),
    ]
    if SHARED_LFW.is_dir():
        lfw = scan_image_folder(SHARED_LFW, verify=False).head(n_images)
        out += [
            ("LFW folder (JPEG 150px)", dict(manifest=lfw, root=SHARED_LFW)),
            ("LFW RecordIO (JPEG 150px)", dict(manifest=pack(lfw, SHARED_LFW, work / "lfw.rec"), root=None,
                                               record_file=work / "lfw.rec")),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=112, help="demo image size and model input size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the readers are measured, not intra-op threading of the tensor ops
    rows = []
    with tempfile.TemporaryDirectory(prefix="read_bench.") as tmp:
        for name, kwargs in sources(Path(tmp), args.images, args.size):
            dataset = ManifestImageDataset(**kwargs, image_size=args.size)
            for workers in args.workers:
                rate = images_per_second(dataset, workers)
                rows.append({"source": name, "workers": workers, "images": len(dataset), "images_per_s": round(rate, 1)})
                print(f"{name:<28} workers={workers}  {len(dataset):>6} images  {rate:>8.1f} img/s", flush=True)
    table = pd.DataFrame(rows).pivot(index="source", columns="workers", values="images_per_s")
    table = table.reindex([r["source"] for r in rows[:: len(args.workers)]])
    table.columns = [f"img/s, {w} workers" for w in table.columns]
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; size {args.size}px")
    print(table.to_string())
    save_json(RESULTS, {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                        "image_size": args.size, "results": rows})
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
