"""Seconds and peak memory of the clustering core as N grows: kNN (exact and IVF), union-find,
Infomap, metrics.

Features are generated MS1M-like (``clustering.benchmark_features``, in blocks of identities so
1M rows never need the generator's float64 temporaries at once). Every case runs in a fresh
process so its peak memory (resident set sampled every 10 ms, minus the resident set once the
inputs are loaded) is its own. The fitted growth exponent is the slope of log seconds over log N.
A case is skipped when the time extrapolated from the smaller sizes passes ``--budget`` seconds.

    python -m bench.cluster_scaling [--sizes 10000 100000 1000000] [--k 80] [--budget 240]

Prints a table and writes bench/results/cluster_scaling.json. faiss runs on the GPU when it
sees one (the table's device column says which).
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

RESULTS = Path(__file__).resolve().parent / "results" / "cluster_scaling.json"
METRICS_N = 5_000_000
LINK_FLOOR = 0.5  # similarity floor of the links union-find and Infomap get (near the tuned values)
IDENTITIES_PER_BLOCK = 5_000
MEAN_IMAGES = 18.6  # mean images per identity of the default generator




def generate(n: int, folder: Path) -> None:
    """About ``n`` generated features and labels, saved as features.npy / labels.npy in ``folder``."""
    from clustering.benchmark_features import generate_benchmark_features

    wanted = max(1, round(n / MEAN_IMAGES))
    parts, labels, offset = [], [], 0
    for block, start in enumerate(range(0, wanted, IDENTITIES_PER_BLOCK)):
        count = min(IDENTITIES_PER_BLOCK, wanted - start)
        features, block_labels = generate_benchmark_features(count, seed=block, world_seed=0)
        parts.append(features)
        labels.append(block_labels + offset)
        offset += count
    np.save(folder / "features.npy", np.concatenate(parts)[:n])
    np.save(folder / "labels.npy", np.concatenate(labels)[:n])


def run_case(stage: str, folder: str, k: int) -> dict:
    """One measured case, in its own process: seconds, peak MB over the loaded inputs, extras."""
    from clustering.knn import KnnGraph, build_knn
    from clustering.metrics import evaluate_partition
    from clustering.partition import partition_links
    from clustering.union_find import connected_components

    folder_path = Path(folder)
    extra: dict = {}
    if stage in ("knn_exact", "knn_ivf"):
        features = np.load(folder_path / "features.npy", mmap_mode="r")
        threshold = np.inf if stage == "knn_exact" else 0

        def work():
            return build_knn(features, k, exact_threshold=threshold)
    elif stage in ("union_find", "union_find_capped", "infomap"):
        src, dst, sims = KnnGraph.load(folder_path / "knn_ivf.npz").edges(min_sim=LINK_FLOOR)
        n = len(np.load(folder_path / "labels.npy", mmap_mode="r"))
        extra["edges"] = int(len(src))
        if stage == "infomap":
            def work():
                return partition_links(n, src, dst, sims, method="infomap", tau=LINK_FLOOR)
        else:
            cap = 300 if stage == "union_find_capped" else None

            def work():
                return connected_components(n, src, dst, weight=sims, max_size=cap)
    elif stage == "metrics":
        rng = np.random.default_rng(0)
        gt = np.repeat(np.arange(METRICS_N // 10), 10)
        pred = np.where(rng.random(METRICS_N) < 0.1, rng.integers(0, METRICS_N, METRICS_N), gt)

        def work():
            return evaluate_partition(gt, pred)
    else:
        raise ValueError(stage)
    result, seconds, peak_mb = run_measured(work)
    if stage in ("knn_exact", "knn_ivf"):
        result.save(folder_path / f"{stage}.npz")
        if stage == "knn_ivf" and (folder_path / "knn_exact.npz").is_file():
            exact = KnnGraph.load(folder_path / "knn_exact.npz")
            extra["recall"] = _recall(exact.nbrs, result.nbrs)
    if stage in ("union_find", "infomap"):
        gt = np.load(folder_path / "labels.npy")
        scores = evaluate_partition(gt, result)
        extra.update(pairwise_f=round(scores["pairwise_f"], 4), bcubed_f=round(scores["bcubed_f"], 4))
    return {"seconds": seconds, "peak_mb": peak_mb, **extra}


def _recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Share of the exact neighbours (self excluded) the approximate graph found."""
    found = sum(len(np.intersect1d(e[1:], a)) for e, a in zip(exact, approx, strict=True))
    return round(found / (exact.shape[0] * (exact.shape[1] - 1)), 4)


def _predicted(history: list[tuple[int, float]], n: int, default_exponent: float) -> float | None:
    if not history:
        return None
    exponent = _exponent(history) if len(history) > 1 else default_exponent
    last_n, last_s = history[-1]
    return last_s * (n / last_n) ** exponent


def _exponent(history: list[tuple[int, float]]) -> float | None:
    if len(history) < 2:
        return None
    ns, secs = np.log([h[0] for h in history]), np.log([max(h[1], 1e-6) for h in history])
    return float(np.polyfit(ns, secs, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--budget", type=float, default=240.0, help="skip a case predicted to take longer (s)")
    args = parser.parse_args(argv)

    import faiss

    from semiface.atomic import save_json

    device = "cuda" if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 else "cpu"
    stages = [("knn_exact", 2.0), ("knn_ivf", 1.3), ("union_find", 1.0), ("union_find_capped", 1.0), ("infomap", 1.2)]
    history: dict[str, list[tuple[int, float]]] = {name: [] for name, _ in stages}
    rows = []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="cluster_scaling_") as tmp:
        for n in sorted(args.sizes):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            generate(n, folder)
            for stage, default_exponent in stages:
                predicted = _predicted(history[stage], n, default_exponent)
                needs = {"union_find": "knn_ivf", "union_find_capped": "knn_ivf", "infomap": "knn_ivf"}.get(stage)
                if needs and not (folder / f"{needs}.npz").is_file():
                    rows.append({"stage": stage, "n": n, "skipped": f"no {needs} graph"})
                    continue
                if predicted is not None and predicted > args.budget:
                    rows.append({"stage": stage, "n": n, "skipped": f"predicted {predicted:.0f} s > budget"})
                    continue
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    result = pool.submit(run_case, stage, str(folder), args.k).result()
                history[stage].append((n, result["seconds"]))
                rows.append({"stage": stage, "n": n, "device": device if stage.startswith("knn") else "cpu", **result})
                print(_row_text(rows[-1]), flush=True)
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            result = pool.submit(run_case, "metrics", tmp, args.k).result()
        rows.append({"stage": "metrics", "n": METRICS_N, "device": "cpu", **result})
    exponents = {name: _exponent(h) for name, h in history.items()}
    print()
    print(_table(rows, exponents))
    save_json(RESULTS, {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "faiss_device": device,
                    "load_average": os.getloadavg()},
        "k": args.k, "link_floor": LINK_FLOOR, "rows": rows, "growth_exponents": exponents,
    })
    print(f"\nwrote {RESULTS}")
    return 0


def _row_text(row: dict) -> str:
    extras = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("stage", "n", "seconds", "peak_mb", "device"))
    return f"{row['stage']:<18} N={row['n']:>9,}  {row['seconds']:8.2f} s  {row['peak_mb']:8.0f} MB  {extras}"


def _table(rows: list[dict], exponents: dict[str, float | None]) -> str:
    lines = ["| stage | N | device | seconds | peak MB | growth exp. | notes |", "|---|---:|---|---:|---:|---:|---|"]
    for row in rows:
        exponent = exponents.get(row["stage"])
        exp_text = "" if exponent is None else f"{exponent:.2f}"
        if "skipped" in row:
            lines.append(f"| {row['stage']} | {row['n']:,} | | | | {exp_text} | skipped: {row['skipped']} |")
            continue
        notes = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("stage", "n", "seconds", "peak_mb", "device"))
        lines.append(f"| {row['stage']} | {row['n']:,} | {row['device']} | {row['seconds']:.2f} | "
                     f"{row['peak_mb']:.0f} | {exp_text} | {notes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
