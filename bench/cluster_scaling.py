"""Seconds and peak memory of the clustering stages as N grows, and the fitted growth exponent of each.

Stages, each in a fresh process (peak resident set sampled every 10 ms, minus the resident set once
its inputs are loaded):

* ``knn_exact``, ``knn_ivf``: ``build_knn`` at ``--k`` (faiss flat; IVF searched list by list on the CPU);
* ``union_find``, ``union_find_capped``, ``infomap``: partitions of the ``knn_ivf`` graph's edges over
  ``LINK_FLOOR`` (the infomap row also gives Infomap's measured bytes and ``partition.infomap_memory``'s
  estimate);
* ``knn_deploy``: the build-knn stage at the deployment's k = 160 (prefect.yaml), written as
  ``knn.npz`` (int32 ids, float16 similarities);
* ``facet``, ``clusformer``, ``facet+infomap``, ``clusformer+infomap``: the cluster stage, reading that
  ``knn.npz`` (the features are loaded first, as the stage holds them) and running ``fit_predict`` of
  a method fitted on a small generated labelled set (one epoch: link scores like a trained model's,
  so the links kept over the tuned tau are realistic); ``facet-bf16``, ``clusformer-bf16``: the same
  models with ``inference_precision="bfloat16"`` (tau tuned in float32: the links move by bf16 rounding).
  FaceT at the demo width with the paper's hop1 150 / hop2 5, Clusformer at the small width with the
  paper's k 64: the settings of the earlier figures of docs/experiments/paper-scale-memory.md (43 and
  25 min at 1M); width sets compute per link, not the O(N k) tables. "with kNN" adds the
  ``knn_deploy`` seconds of the same N;
* ``metrics``: ``evaluate_partition`` at 5M.

Features are generated MS1M-like (``clustering.benchmark_features``, in blocks of identities so 2M
rows never need the generator's float64 temporaries at once). Each case also records ``ref_s``, the
seconds of a fixed torch workload run just before and just after it (``bench.measure.reference_seconds``):
this VM's speed drifts by up to 2x within an hour, so rows taken at different moments compare through it.
The growth exponent is the slope of log seconds over log N across every size measured. A case is skipped when the time extrapolated
from the smaller sizes passes ``--budget`` seconds.

    python -m bench.cluster_scaling [--sizes 10000 100000] [--stages ...] [--k 80] [--data DIR]

``--data DIR`` keeps the generated features, graphs and fitted models between invocations, so each
size and stage can run in its own ``cpulock`` slot; rows accumulate in
bench/results/cluster_scaling.json (one per stage and N, the latest kept) and the table printed
covers them all. faiss runs on the GPU when it sees one (the device column says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.measure import reference_seconds, run_measured

RESULTS = Path(__file__).resolve().parent / "results" / "cluster_scaling.json"
METRICS_N = 5_000_000
LINK_FLOOR = 0.5  # similarity floor of the links union-find and Infomap get (near the tuned values)
IDENTITIES_PER_BLOCK = 5_000
DEPLOY_K = 160  # prefect.yaml's k
HOP1, HOP2, CLUSFORMER_K = 150, 5, 64  # the papers' neighbourhood sizes
FACET = {"preset": "demo", "hop1": HOP1, "hop2": HOP2, "epochs": 1, "device": "cpu"}
CLUSFORMER = {"preset": "small", "k": CLUSFORMER_K, "epochs": 1, "device": "cpu"}
METHODS = {"facet": FACET, "clusformer": CLUSFORMER, "facet+infomap": FACET, "clusformer+infomap": CLUSFORMER}
LABELLED_IDENTITIES = 200
CORE_STAGES = ("knn_exact", "knn_ivf", "union_find", "union_find_capped", "infomap")
# the same fitted models with inference autocast to bf16 (inference_precision="bfloat16": pays on a CPU with bf16
# instructions, such as this AMD EPYC's AVX512-BF16)
BF16_STAGES = {"facet-bf16": "facet", "clusformer-bf16": "clusformer"}
CLUSTER_STAGES = (*METHODS, *BF16_STAGES)
STAGES = (*CORE_STAGES, "knn_deploy", *CLUSTER_STAGES, "metrics")
# growth assumed for a stage measured at one size only, to skip a size predicted over --budget
DEFAULT_EXPONENTS = {"knn_exact": 2.0, "knn_ivf": 1.3, "knn_deploy": 1.3}
NEEDS = {"union_find": "knn_ivf", "union_find_capped": "knn_ivf", "infomap": "knn_ivf",
         **{name: "knn_deploy" for name in CLUSTER_STAGES}}


def generate(n: int, folder: Path) -> None:
    """``n`` generated features and labels, saved as features.npy / labels.npy in ``folder``."""
    from clustering.benchmark_features import generate_benchmark_features

    parts, labels, offset, rows, block = [], [], 0, 0, 0
    while rows < n:
        features, block_labels = generate_benchmark_features(IDENTITIES_PER_BLOCK, seed=block, world_seed=0)
        parts.append(features)
        labels.append(block_labels + offset)
        offset, rows, block = offset + IDENTITIES_PER_BLOCK, rows + len(features), block + 1
    np.save(folder / "features.npy", np.concatenate(parts)[:n])
    np.save(folder / "labels.npy", np.concatenate(labels)[:n])


def fit_methods(folder: Path) -> None:
    """Fit every method of ``METHODS`` on a small generated labelled set; save each in ``folder``."""
    import torch

    from clustering.base import make_method
    from clustering.benchmark_features import generate_benchmark_features

    torch.set_num_threads(os.cpu_count() or 1)
    features, labels = generate_benchmark_features(LABELLED_IDENTITIES, seed=10_001, world_seed=0)
    for name, params in METHODS.items():
        make_method(name, **params).fit(features, labels).save(folder / f"{name}.pt")


def run_case(stage: str, folder: str, models: str, k: int) -> dict:
    """One measured case, in its own process: seconds, peak MB over the loaded inputs, extras."""
    from clustering.knn import KnnGraph, build_knn
    from clustering.metrics import evaluate_partition
    from clustering.partition import infomap_memory, partition_links
    from clustering.union_find import connected_components

    folder_path = Path(folder)
    extra: dict = {}
    if stage in ("knn_exact", "knn_ivf", "knn_deploy"):
        features = np.load(folder_path / "features.npy", mmap_mode="r")
        threshold = np.inf if stage == "knn_exact" else (0 if stage == "knn_ivf" else 200_000)
        depth = DEPLOY_K if stage == "knn_deploy" else k

        def work():
            graph = build_knn(features, depth, exact_threshold=threshold)
            if stage == "knn_deploy":
                graph.save(folder_path / "knn_deploy.npz")
            return graph
    elif stage in ("union_find", "union_find_capped", "infomap"):
        src, dst, sims = KnnGraph.load(folder_path / "knn_ivf.npz").edges(min_sim=LINK_FLOOR)
        n = len(np.load(folder_path / "labels.npy", mmap_mode="r"))
        extra["edges"] = int(len(src))
        if stage == "infomap":
            extra["infomap_estimate_mb"] = round(infomap_memory(n, len(src)) / 2**20)

            def work():
                return partition_links(n, src, dst, sims, method="infomap", tau=LINK_FLOOR)
        else:
            cap = 300 if stage == "union_find_capped" else None

            def work():
                return connected_components(n, src, dst, weight=sims, max_size=cap)
    elif stage in CLUSTER_STAGES:
        method = _load_method(BF16_STAGES.get(stage, stage), Path(models))
        if stage in BF16_STAGES:
            method.config = dataclasses.replace(method.config, inference_precision="bfloat16")
        features = np.load(folder_path / "features.npy")

        def work():
            return method.fit_predict(features, KnnGraph.load(folder_path / "knn_deploy.npz"))
    elif stage == "metrics":
        rng = np.random.default_rng(0)
        gt = np.repeat(np.arange(METRICS_N // 10), 10)
        pred = np.where(rng.random(METRICS_N) < 0.1, rng.integers(0, METRICS_N, METRICS_N), gt)

        def work():
            return evaluate_partition(gt, pred)
    else:
        raise ValueError(stage)
    reference_before = reference_seconds()  # the machine's speed around the case (bench.measure)
    result, seconds, peak_mb = run_measured(work)
    extra["ref_s"] = [round(reference_before, 3), round(reference_seconds(), 3)]
    if stage in ("knn_exact", "knn_ivf"):
        result.save(folder_path / f"{stage}.npz")
        if stage == "knn_ivf" and (folder_path / "knn_exact.npz").is_file():
            exact = KnnGraph.load(folder_path / "knn_exact.npz")
            extra["recall"] = _recall(exact.nbrs, result.nbrs)
    if stage in ("union_find", "infomap", *CLUSTER_STAGES):
        scores = evaluate_partition(np.load(folder_path / "labels.npy"), result)
        extra.update(pairwise_f=round(scores["pairwise_f"], 4), bcubed_f=round(scores["bcubed_f"], 4))
    return {"seconds": seconds, "peak_mb": peak_mb, **extra}


def _load_method(stage: str, models: Path):
    import torch

    from clustering.clusformer import Clusformer
    from clustering.facet import FaceT

    torch.set_num_threads(os.cpu_count() or 1)
    cls = FaceT if stage.startswith("facet") else Clusformer
    return cls.load(models / f"{stage}.pt", device="cpu")


def _recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Share of the exact neighbours (self excluded) the approximate graph found."""
    found = sum(len(np.intersect1d(e[1:], a)) for e, a in zip(exact, approx, strict=True))
    return round(found / (exact.shape[0] * (exact.shape[1] - 1)), 4)


def _predicted(history: list[tuple[int, float]], n: int, default_exponent: float) -> float | None:
    if not history:
        return None
    smaller = [h for h in history if h[0] < n]
    if not smaller:
        return None
    exponent = _exponent(smaller) if len(smaller) > 1 else default_exponent
    last_n, last_s = smaller[-1]
    return last_s * (n / last_n) ** exponent


def _exponent(history: list[tuple[int, float]]) -> float | None:
    if len(history) < 2:
        return None
    ns, secs = np.log([h[0] for h in history]), np.log([max(h[1], 1e-6) for h in history])
    return float(np.polyfit(ns, secs, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=[*CORE_STAGES, "metrics"])
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--budget", type=float, default=1200.0, help="skip a case predicted to take longer (s)")
    parser.add_argument("--data", type=Path, default=None, help="folder kept between invocations (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import faiss

    from semiface.atomic import save_json

    device = "cuda" if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 else "cpu"
    previous = _previous_rows(args.out, args.k)
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="cluster_scaling_") as tmp:
        root = args.data or Path(tmp)
        models = root / "models"
        if any(stage in CLUSTER_STAGES for stage in args.stages) and not all((models / f"{m}.pt").is_file() for m in METHODS):
            models.mkdir(parents=True, exist_ok=True)
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                pool.submit(fit_methods, models).result()
        rows = dict(previous)
        for n in sorted(args.sizes):
            folder = root / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "features.npy").is_file():
                generate(n, folder)
            for stage in (s for s in STAGES if s in args.stages and s != "metrics"):
                history = sorted((r["n"], r["seconds"]) for r in rows.values() if r["stage"] == stage and "seconds" in r)
                predicted = _predicted(history, n, DEFAULT_EXPONENTS.get(stage, 1.0))
                needs = NEEDS.get(stage)
                if needs and not (folder / f"{needs}.npz").is_file():
                    rows[(stage, n)] = {"stage": stage, "n": n, "skipped": f"no {needs} graph (run the {needs} stage first)"}
                elif predicted is not None and predicted > args.budget:
                    rows[(stage, n)] = {"stage": stage, "n": n, "skipped": f"predicted {predicted:.0f} s > budget"}
                else:
                    with ProcessPoolExecutor(1, mp_context=context) as pool:
                        result = pool.submit(run_case, stage, str(folder), str(models), args.k).result()
                    knn_device = device if stage.startswith("knn") else "cpu"
                    rows[(stage, n)] = {"stage": stage, "n": n, "device": knn_device, **result}
                print(_row_text(rows[(stage, n)]), flush=True)
        if "metrics" in args.stages:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                result = pool.submit(run_case, "metrics", str(root), str(models), args.k).result()
            rows[("metrics", METRICS_N)] = {"stage": "metrics", "n": METRICS_N, "device": "cpu", **result}
    ordered = sorted(rows.values(), key=lambda r: (STAGES.index(r["stage"]), r["n"]))
    exponents = {stage: _exponent(sorted((r["n"], r["seconds"]) for r in ordered if r["stage"] == stage and "seconds" in r))
                 for stage in STAGES}
    print()
    print(_table(ordered, exponents))
    save_json(args.out, {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "faiss_device": device,
                    "load_average": os.getloadavg()},
        "k": args.k, "deploy_k": DEPLOY_K, "link_floor": LINK_FLOOR, "facet": FACET, "clusformer": CLUSFORMER,
        "rows": ordered, "growth_exponents": exponents,
    })
    print(f"\nwrote {args.out}")
    return 0


def _previous_rows(path: Path, k: int) -> dict[tuple[str, int], dict]:
    """Rows of earlier invocations written to ``path`` with the same ``k`` (one per stage and N)."""
    import json

    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    if saved.get("k") != k:
        return {}
    return {(r["stage"], r["n"]): r for r in saved.get("rows", []) if r.get("stage") in STAGES}


def _row_text(row: dict) -> str:
    if "skipped" in row:
        return f"{row['stage']:<20} N={row['n']:>9,}  skipped: {row['skipped']}"
    extras = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("stage", "n", "seconds", "peak_mb", "device"))
    return f"{row['stage']:<20} N={row['n']:>9,}  {row['seconds']:8.1f} s  {row['peak_mb']:8.0f} MB  {extras}"


def _table(rows: list[dict], exponents: dict[str, float | None]) -> str:
    knn_seconds = {r["n"]: r["seconds"] for r in rows if r["stage"] == "knn_deploy" and "seconds" in r}
    lines = ["| stage | N | device | seconds | with kNN (min) | peak MB | growth exp. | notes |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for row in rows:
        exponent = exponents.get(row["stage"])
        exp_text = "" if exponent is None else f"{exponent:.2f}"
        if "skipped" in row:
            lines.append(f"| {row['stage']} | {row['n']:,} | | | | | {exp_text} | skipped: {row['skipped']} |")
            continue
        with_knn = ""
        if row["stage"] in CLUSTER_STAGES and row["n"] in knn_seconds:
            with_knn = f"{(row['seconds'] + knn_seconds[row['n']]) / 60:.1f}"
        notes = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("stage", "n", "seconds", "peak_mb", "device"))
        lines.append(f"| {row['stage']} | {row['n']:,} | {row['device']} | {row['seconds']:.1f} | {with_knn} | "
                     f"{row['peak_mb']:,.0f} | {exp_text} | {notes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
