"""Peak host memory of the build-knn and cluster stages at paper scale, measured on generated features at
250K, 1M and 2M rows and extrapolated to MS1M's 5.21M unlabelled x 256; and the disk footprint of a
5.21M run folder, stage by stage, computed from the real file formats.

Cases (``bench.cluster_scaling``'s, each in a fresh process; peak resident set over the features it holds):

* ``knn_deploy``: ``build_knn`` at the deployment's k = 160 (IVF beyond 200K rows), written as ``knn.npz``;
* ``facet``, ``clusformer``: the cluster stage: that ``knn.npz`` read, ``fit_predict`` of FaceT (demo
  width, hop1 150 / hop2 5) or Clusformer (small width, k 64) fitted on a small generated labelled
  set. Width sets compute and a batch's activations, not the O(N k) tables that grow with N.

Peak memory is fitted as a + b N over the sizes measured and extrapolated to 5.21M, beside the
figures this bench gave before (docs/experiments/paper-scale-memory.md: int64 ids and no link pre-filter; those processes built their
kNN graph at hop1 + 1 / k themselves). The disk table writes each artefact at ``--disk-rows`` rows
with the project's own writers (features, kNN files, rows, clusters, manifests) and scales its bytes
per row to MS1M (5.82M images); model files are computed from parameter counts.

    python -m bench.paper_scale_memory [--sizes 250000 1000000 2000000] [--cases knn_deploy facet clusformer]
        [--data DIR] [--reuse]

``--reuse`` takes the rows ``bench.cluster_scaling`` already measured for these cases (same runner,
same settings) from bench/results/cluster_scaling.json instead of measuring them again. Prints the
tables and writes bench/results/paper_scale_memory.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench import cluster_scaling

RESULTS = Path(__file__).resolve().parent / "results" / "paper_scale_memory.json"
CASES = ("knn_deploy", "facet", "clusformer")
TARGET_N = 5_210_000  # MS1M's nine unlabelled tenths (learn-to-cluster's ms1m: 5.21M)
MS1M_IMAGES = 5_822_653  # MS1M-v2 (faces_emore): images
MS1M_IDENTITIES = 85_742
MEGAFACE_IMAGES = 1_027_058 + 3_530  # MegaFace distractors + FaceScrub probes
DIM = 256
# The earlier figures (docs/experiments/paper-scale-memory.md) before int32 ids (measured at 250K and 1M, extrapolated), in GB over the features.
BEFORE_GB = {"facet": (2.0, 7.9, 40.8), "clusformer": (1.8, 7.3, 38.5)}
TARGET_GB = 16.0


def extrapolate(points: list[tuple[int, float]], n: int) -> float | None:
    """a + b n fitted to (N, peak MB) points (a line through the origin for one point), at ``n``."""
    if not points:
        return None
    ns, peaks = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    if len(points) == 1:
        return float(peaks[0] / ns[0] * n)
    slope, intercept = np.polyfit(ns, peaks, 1)
    return float(intercept + slope * n)


def disk_footprint(rows: int, folder: Path) -> list[dict]:
    """Bytes of each artefact of a 5.21M ms1m-full run folder: written at ``rows`` rows with the
    project's writers and scaled per row (marked "scaled"), or computed (marked "computed")."""
    import pandas as pd

    from clustering.knn import KnnGraph
    from semiface.atomic import save_npy
    from semiface.features import save_features
    from semiface.manifest import write_manifest

    rng = np.random.default_rng(0)
    labelled = int(round(0.1 * MS1M_IMAGES))
    features = save_features(folder / "features.npy", rng.standard_normal((rows, DIM)).astype(np.float32))
    ids = rng.integers(0, rows, (rows, cluster_scaling.DEPLOY_K)).astype(np.int32)
    knn = KnnGraph(ids, rng.random(ids.shape, dtype=np.float32)).save(folder / "knn.npz")
    row_ids = save_npy(folder / "rows.npy", np.arange(rows, dtype=np.int64))
    pred = save_npy(folder / "pred.npy", rng.integers(-1, rows // 20, rows))
    conf = save_npy(folder / "conf.npy", rng.random(rows, dtype=np.float32))
    identity = rng.integers(0, MS1M_IDENTITIES, rows)
    frame = pd.DataFrame({"rec_index": np.arange(1, rows + 1), "label": np.where(identity % 10 == 0, identity, -1),
                          "identity": identity.astype(str), "split": np.where(identity % 10 == 0, "labelled", "unlabelled")})
    manifest = write_manifest(frame, folder / "manifest.parquet")
    merged = write_manifest(frame.assign(label=identity, label_source="pseudo", weight=rng.random(rows, dtype=np.float32)),
                            folder / "retrain.parquet")

    def per_row(path: Path) -> float:
        return path.stat().st_size / rows

    backbone_mb = 43.6e6 * 4 / 1e6  # IR-50 trunk + embedding (ArcFace's iresnet50: 43.6M parameters)
    return [
        {"stage": "prepare_data", "artefact": "manifest.parquet (all MS1M rows)", "gb": per_row(manifest) * MS1M_IMAGES / 1e9, "how": "scaled"},
        {"stage": "train_backbone", "artefact": "model.pt (IR-50 + 8.6K-class head)", "gb": (backbone_mb + 0.1 * MS1M_IDENTITIES * DIM * 4 / 1e6) / 1e3, "how": "computed"},
        {"stage": "extract_features", "artefact": "features.npy (all MS1M rows, float32)", "gb": per_row(features) * MS1M_IMAGES / 1e9, "how": "scaled"},
        {"stage": "build_knn (labelled)", "artefact": "knn.npz k=160 + rows.npy", "gb": (per_row(knn) + per_row(row_ids)) * labelled / 1e9, "how": "scaled"},
        {"stage": "build_knn (unlabelled)", "artefact": "knn.npz k=160 + rows.npy", "gb": (per_row(knn) + per_row(row_ids)) * TARGET_N / 1e9, "how": "scaled"},
        {"stage": "cluster", "artefact": "pred_labels.npy + confidence.npy", "gb": (per_row(pred) + per_row(conf)) * TARGET_N / 1e9, "how": "scaled"},
        {"stage": "cluster (while it runs, host mode only)", "artefact": "FaceT's memory map of g (paper width 256)", "gb": TARGET_N * 256 * 4 / 1e9, "how": "computed", "temporary": True},
        {"stage": "merge_pseudo_labels", "artefact": "retrain_manifest.parquet", "gb": per_row(merged) * MS1M_IMAGES / 1e9, "how": "scaled"},
        {"stage": "retrain", "artefact": "model.pt (IR-50 + head of labelled and pseudo classes)", "gb": (backbone_mb + MS1M_IDENTITIES * DIM * 4 / 1e6) / 1e3, "how": "computed"},
        {"stage": "extract_features (evaluation set, 2 models)", "artefact": "features.npy of MegaFace 1M + FaceScrub", "gb": 2 * per_row(features) * MEGAFACE_IMAGES / 1e9, "how": "scaled"},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000, 2_000_000])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--data", type=Path, default=None, help="folder kept between invocations (as bench.cluster_scaling's)")
    parser.add_argument("--reuse", action="store_true", help="take rows bench.cluster_scaling measured for these cases")
    parser.add_argument("--disk-rows", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from semiface.atomic import save_json

    rows: list[dict] = []
    if args.reuse and cluster_scaling.RESULTS.is_file():
        measured = json.loads(cluster_scaling.RESULTS.read_text())["rows"]
        rows = [r for r in measured if r["stage"] in args.cases and r["n"] in args.sizes and "peak_mb" in r]
    missing = [(case, n) for n in sorted(args.sizes) for case in args.cases if not any(r["stage"] == case and r["n"] == n for r in rows)]
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="paper_scale_memory_") as tmp:
        root = args.data or Path(tmp)
        models = root / "models"
        if any(case != "knn_deploy" for case, _ in missing) and not all((models / f"{c}.pt").is_file() for c in cluster_scaling.METHODS):
            models.mkdir(parents=True, exist_ok=True)
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                pool.submit(cluster_scaling.fit_methods, models).result()
        for case, n in sorted(missing, key=lambda m: (m[1], CASES.index(m[0]))):
            folder = root / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "features.npy").is_file():
                cluster_scaling.generate(n, folder)
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                result = pool.submit(cluster_scaling.run_case, case, str(folder), str(models), 80).result()
            rows.append({"stage": case, "n": n, **result})
            print(f"{case:<12} N={n:>9,}  {result['seconds']:8.1f} s  {result['peak_mb']:8.0f} MB", flush=True)
        disk_dir = Path(tmp) / "disk"
        disk_dir.mkdir()
        disk = disk_footprint(args.disk_rows, disk_dir)
    rows.sort(key=lambda r: (CASES.index(r["stage"]), r["n"]))
    estimates = {case: extrapolate([(r["n"], r["peak_mb"]) for r in rows if r["stage"] == case], TARGET_N) for case in args.cases}
    features_gb = TARGET_N * DIM * 4 / 1e9
    print()
    print(_memory_table(rows, estimates, features_gb))
    print()
    print(_disk_table(disk))
    save_json(args.out, {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "facet": cluster_scaling.FACET, "clusformer": cluster_scaling.CLUSFORMER, "deploy_k": cluster_scaling.DEPLOY_K,
        "rows": rows, "target_n": TARGET_N, "extrapolated_peak_mb": estimates, "target_features_gb": features_gb,
        "before_gb": BEFORE_GB, "disk": disk, "disk_rows_written": args.disk_rows,
    })
    print(f"\nwrote {args.out}")
    return 0


def _memory_table(rows: list[dict], estimates: dict[str, float | None], features_gb: float) -> str:
    lines = ["| case | N | seconds | peak GB over the features | before | notes |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        before = BEFORE_GB.get(r["stage"])
        old = {250_000: 0, 1_000_000: 1}.get(r["n"])
        before_text = f"{before[old]:.1f}" if before and old is not None else ""
        notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("stage", "n", "seconds", "peak_mb", "device"))
        lines.append(f"| {r['stage']} | {r['n']:,} | {r['seconds']:.1f} | {r['peak_mb'] / 1024:.2f} | {before_text} | {notes} |")
    for case, mb in estimates.items():
        if mb is None:
            continue
        before = BEFORE_GB.get(case)
        verdict = "meets" if mb / 1024 <= TARGET_GB else "misses"
        lines.append(f"| {case} | {TARGET_N:,} (extrapolated, a + bN) | | {mb / 1024:.1f} | "
                     f"{f'{before[2]:.1f}' if before else ''} | {verdict} the {TARGET_GB:.0f} GB target; + {features_gb:.1f} GB of features in RAM |")
    return "\n".join(lines)


def _disk_table(disk: list[dict]) -> str:
    lines = ["| stage | artefact | GB | how |", "|---|---|---:|---|"]
    for item in disk:
        lines.append(f"| {item['stage']} | {item['artefact']} | {item['gb']:.2f} | {item['how']} |")
    kept = sum(item["gb"] for item in disk if not item.get("temporary"))
    peak = kept + sum(item["gb"] for item in disk if item.get("temporary"))
    lines.append(f"| **total** | kept after the run | **{kept:.1f}** | |")
    lines.append(f"| **peak** | while the cluster stage runs in host mode | **{peak:.1f}** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
