"""Peak host memory of the clustering step at paper scale, measured on the CPU up to 1M rows and
extrapolated to MS1M's 5.21M x 256.

Cases, each in a fresh process (its peak resident set over the loaded features is its own):

* ``neighbourhood``: what FaceT reads of a set before inference: the kNN graph at hop1 + 1 = 151
  (``build_knn``: IVF beyond 200K rows), the neighbour table and the pair-statistics index;
* ``facet``: ``FaceT.fit_predict`` end to end (kNN, neighbourhood, RE + LP inference, links,
  union-find) at the paper's hop1 = 150, hop2 = 5;
* ``clusformer``: ``Clusformer.fit_predict`` end to end (kNN, sequences, inference, links,
  union-find) at the paper's k = 64.

The methods are fitted first on a small generated labelled set (one epoch: link scores like a
trained model's, so the links kept over tau are realistic). Their width is the demo's / the small
preset's: width sets the compute and a batch's activations, not the O(N x k) tables that grow with
N; the paper widths would take hours per case on a CPU. Features are generated MS1M-like 256-d
(``bench.cluster_scaling.generate``). Peak memory is fitted as a + b N over the sizes run and
extrapolated to 5.21M (plus the features themselves, 5.21M x 256 x 4 bytes, when held in RAM).

    python -m bench.paper_scale_memory [--sizes 250000 1000000] [--cases neighbourhood facet clusformer]

Prints a table and writes bench/results/paper_scale_memory.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.measure import run_measured

RESULTS = Path(__file__).resolve().parent / "results" / "paper_scale_memory.json"
CASES = ("neighbourhood", "facet", "clusformer")
TARGET_N = 5_210_000  # MS1M images (learn-to-cluster's ms1m: 5.21M)
DIM = 256
HOP1, HOP2, CLUSFORMER_K = 150, 5, 64  # the papers' neighbourhood sizes
FACET = {"preset": "demo", "hop1": HOP1, "hop2": HOP2, "epochs": 1, "device": "cpu"}
CLUSFORMER = {"preset": "small", "k": CLUSFORMER_K, "epochs": 1, "device": "cpu"}
LABELLED_IDENTITIES = 200


def fit_methods(folder: Path) -> None:
    """Fit FaceT and Clusformer on a small generated labelled set; save both in ``folder``."""
    import torch

    from clustering.base import make_method
    from clustering.benchmark_features import generate_benchmark_features

    torch.set_num_threads(os.cpu_count() or 1)
    features, labels = generate_benchmark_features(LABELLED_IDENTITIES, seed=10_001, world_seed=0)
    make_method("facet", **FACET).fit(features, labels).save(folder / "facet.pt")
    make_method("clusformer", **CLUSFORMER).fit(features, labels).save(folder / "clusformer.pt")


def run_case(case: str, data: str, models: str) -> dict:
    """One measured case in this (fresh) process: seconds, peak MB over the loaded features, extras."""
    import torch

    from clustering.clusformer import Clusformer
    from clustering.facet import FaceT

    features = np.load(Path(data) / "features.npy")
    extra: dict = {}
    if case == "neighbourhood":
        method = FaceT.load(Path(models) / "facet.pt", device="cpu")

        def work():
            return method._neighbourhood(features, None, torch.device("cpu"))
    elif case == "facet":
        method = FaceT.load(Path(models) / "facet.pt", device="cpu")

        def work():
            return method.fit_predict(features, None)
    elif case == "clusformer":
        method = Clusformer.load(Path(models) / "clusformer.pt", device="cpu")

        def work():
            return method.fit_predict(features, None)
    else:
        raise ValueError(case)
    result, seconds, peak_mb = run_measured(work)
    if case in ("facet", "clusformer"):
        from clustering.metrics import evaluate_partition

        scores = evaluate_partition(np.load(Path(data) / "labels.npy"), result)
        extra = {"pairwise_f": round(scores["pairwise_f"], 3), "clusters": int(len(np.unique(result)))}
    return {"seconds": seconds, "peak_mb": peak_mb, **extra}


def extrapolate(points: list[tuple[int, float]], n: int) -> float | None:
    """a + b n fitted to (N, peak MB) points (a line through the origin for one point), at ``n``."""
    if not points:
        return None
    ns, peaks = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    if len(points) == 1:
        return float(peaks[0] / ns[0] * n)
    slope, intercept = np.polyfit(ns, peaks, 1)
    return float(intercept + slope * n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from bench.cluster_scaling import generate
    from semiface.atomic import save_json

    context = multiprocessing.get_context("spawn")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="paper_scale_memory_") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            pool.submit(fit_methods, models).result()
        for n in sorted(args.sizes):
            data = Path(tmp) / str(n)
            data.mkdir()
            generate(n, data)
            for case in args.cases:
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    result = pool.submit(run_case, case, str(data), str(models)).result()
                rows.append({"case": case, "n": n, **result})
                print(f"{case:<14} N={n:>9,}  {result['seconds']:8.1f} s  {result['peak_mb']:8.0f} MB", flush=True)
    features_mb = TARGET_N * DIM * 4 / 2**20
    estimates = {case: extrapolate([(r["n"], r["peak_mb"]) for r in rows if r["case"] == case], TARGET_N)
                 for case in args.cases}
    lines = ["| case | N | seconds | peak MB over the features | notes |", "|---|---:|---:|---:|---|"]
    for r in rows:
        notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("case", "n", "seconds", "peak_mb"))
        lines.append(f"| {r['case']} | {r['n']:,} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {notes} |")
    for case, mb in estimates.items():
        lines.append(f"| {case} | {TARGET_N:,} (extrapolated) | | {mb:,.0f} | + {features_mb:,.0f} MB of features in RAM |")
    print()
    print("\n".join(lines))
    save_json(args.out, {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "facet": FACET, "clusformer": CLUSFORMER, "rows": rows, "target_n": TARGET_N,
        "extrapolated_peak_mb": estimates, "target_features_mb": features_mb,
    })
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
