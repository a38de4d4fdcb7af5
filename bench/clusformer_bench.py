"""Clusformer: speed and memory as N grows, quality against the baselines, and the encoding ablation.

1. Scaling (generated MS1M-like 256-d features, the "small" preset at k=64): kNN seconds, training
   sequences/s (one pass over ``--train-centres`` centres, as an epoch would run them; seconds per
   epoch = N / that rate), inference centres/s over all N, end-to-end clustering seconds (kNN +
   inference + links + union-find) and peak memory. Each N runs in a fresh process so its peak
   resident set (sampled every 10 ms) is its own; on CUDA the peak allocated GPU memory too. A size
   is skipped when the time extrapolated from the smaller ones passes ``--budget`` seconds.
2. Quality (generated 64-d features, 300 labelled identities, 300 unseen ones to cluster, k=16):
   the harness table of knn_uf, infomap, Clusformer+UF and Clusformer+Infomap (FaceT too with
   ``--facet``), every threshold tuned on the labelled part only.
3. Encoding ablation (paper table 3): the same quality run for CDE, none, learnable, sinusoidal.

    python -m bench.clusformer_bench [--sizes 10000 50000 100000] [--budget 240] [--skip-quality]

Prints the tables and writes bench/results/clusformer_bench.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.measure import PeakRss
from clustering.base import available_methods, make_method
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits, generate_benchmark_features
from clustering.clusformer import ClusformerConfig, ClusformerNet
from clustering.clusformer.training import predict_sequences, train_clusformer
from clustering.evaluate import format_table, run_harness
from clustering.knn import build_knn
from clustering.links import undirected_links
from clustering.metrics import evaluate_partition
from clustering.partition import partition_links
from semiface.atomic import save_json
from semiface.devices import resolve_device

RESULTS = Path(__file__).resolve().parent / "results" / "clusformer_bench.json"
MEAN_IMAGES = 18.6  # mean images per identity of the default generator
QUALITY_FEATURES = BenchmarkConfig(dim=64, nuisance_dims=16)
QUALITY_K = 16
# The configuration of the slow test in tests/test_clusformer.py (CPU-sized, trains in ~1 minute).
QUALITY_PARAMS = dict(k=QUALITY_K, d_model=64, nhead=4, dim_feedforward=128, num_encoder_layers=1,
                      num_decoder_layers=1, epochs=8, batch_size=64, lr=2e-3)
ABLATION_PARAMS = {**QUALITY_PARAMS, "d_model": 32, "dim_feedforward": 64, "epochs": 4, "max_train_centres": 3000}


def scaling_case(n: int, train_centres: int, device_spec: str) -> dict:
    """One N: kNN, training rate, inference rate, end-to-end seconds, peak memory (run in its own process)."""
    device = resolve_device(device_spec)
    features = _generated(n)
    config = ClusformerConfig.from_preset("small", epochs=1, max_train_centres=train_centres)
    torch.manual_seed(0)
    model = ClusformerNet(features.shape[1], config).to(device)
    labels = np.random.default_rng(0).integers(0, max(1, n // 19), n)  # targets only shape the loss, not speed
    # warm-up: the first optimizer step imports torch's compiler stack (seconds, once per process)
    train_clusformer(model, features[:256], labels[:256], build_knn(features[:256], config.k), config.with_updates(max_train_centres=64), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        started = time.perf_counter()
        graph = build_knn(features, config.k, device=device_spec)
        knn_seconds = time.perf_counter() - started

        started = time.perf_counter()
        train_clusformer(model, features, labels, graph, config, device)
        train_seconds = time.perf_counter() - started

        started = time.perf_counter()
        ids, probs = predict_sequences(model, features, graph, config, device)
        infer_seconds = time.perf_counter() - started

        started = time.perf_counter()
        tau = float(np.log(0.9 / 0.1))  # p = 0.9, as log-odds
        src, dst, weight = undirected_links(n, ids, probs, config.link_rule, logits=True)
        partition_links(n, src, dst, weight, tau=tau, logits=True)
        partition_seconds = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    trained = min(n, train_centres)
    return {
        "n": n, "k": config.k, "device": str(device), "knn_seconds": knn_seconds,
        "train_sequences_per_s": trained / train_seconds, "epoch_seconds": n * train_seconds / trained,
        "infer_centres_per_s": n / infer_seconds, "links_partition_seconds": partition_seconds,
        "end_to_end_seconds": knn_seconds + infer_seconds + partition_seconds,
        "peak_rss_mib": (rss.peak - rss.start) / 2**20, "peak_gpu_mib": gpu_peak,
    }


def _generated(n: int) -> np.ndarray:
    """The first ``n`` rows of a generated set drawn with enough identities (image counts are random)."""
    identities = int(np.ceil(n / MEAN_IMAGES))
    while True:
        features, _ = generate_benchmark_features(identities, seed=1)
        if len(features) >= n:
            return features[:n]
        identities = int(identities * 1.2) + 1


def run_scaling(sizes: list[int], train_centres: int, device: str, budget: float) -> list[dict]:
    rows: list[dict] = []
    context = multiprocessing.get_context("spawn")
    for n in sorted(sizes):
        if rows:
            predicted = rows[-1]["end_to_end_seconds"] * n / rows[-1]["n"] + train_centres / rows[-1]["train_sequences_per_s"]
            if predicted > budget:
                print(f"skip N={n}: predicted {predicted:.0f} s > budget {budget:.0f} s")
                continue
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            rows.append(pool.submit(scaling_case, n, train_centres, device).result())
        print(_format_scaling(rows[-1:]), flush=True)
    return rows


def run_quality(with_facet: bool) -> pd.DataFrame:
    """Harness table on 300 labelled / 300 unseen generated identities."""
    splits = benchmark_splits(300, [300], config=QUALITY_FEATURES, seed=0)
    methods = ["knn_uf", "infomap", "clusformer", "clusformer+infomap"]
    if with_facet and "facet" in available_methods():
        methods += ["facet", "facet+infomap"]
    params = {"clusformer": QUALITY_PARAMS, "clusformer+infomap": QUALITY_PARAMS}
    return run_harness(methods, splits.train_features, splits.train_labels, splits.test_features[0],
                       splits.test_labels[0], k=QUALITY_K, method_params=params)


def run_ablation() -> pd.DataFrame:
    """Clusformer+UF with each input encoding of the paper's table 3, same data as the quality run."""
    splits = benchmark_splits(300, [300], config=QUALITY_FEATURES, seed=0)
    features, labels = splits.test_features[0], splits.test_labels[0]
    graph = build_knn(features, QUALITY_K)
    rows = []
    for encoding in ("cde", "none", "learnable", "sinusoidal"):
        started = time.perf_counter()
        method = make_method("clusformer", **ABLATION_PARAMS, encoding=encoding)
        method.fit(splits.train_features, splits.train_labels)
        scores = evaluate_partition(labels, method.fit_predict(features, graph))
        rows.append({"encoding": encoding, "pairwise_f": scores["pairwise_f"], "bcubed_f": scores["bcubed_f"],
                     "nmi": scores["nmi"], "noise_ratio": scores["noise_ratio"], "tau": method.tau_,
                     "seconds": time.perf_counter() - started})
        print(f"  {encoding}: FP {scores['pairwise_f']:.4f} FB {scores['bcubed_f']:.4f}", flush=True)
    return pd.DataFrame(rows)


def _format_scaling(rows: list[dict]) -> str:
    head = (f"{'N':>8} {'device':>6} {'kNN s':>7} {'train seq/s':>11} {'epoch s':>8} {'infer centres/s':>15} "
            f"{'links+UF s':>10} {'end-to-end s':>12} {'peak RSS MiB':>12} {'GPU MiB':>8}")
    lines = [head]
    for r in rows:
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        lines.append(f"{r['n']:>8} {r['device']:>6} {r['knn_seconds']:>7.1f} {r['train_sequences_per_s']:>11.0f} "
                     f"{r['epoch_seconds']:>8.1f} {r['infer_centres_per_s']:>15.0f} {r['links_partition_seconds']:>10.2f} "
                     f"{r['end_to_end_seconds']:>12.1f} {r['peak_rss_mib']:>12.0f} {gpu:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--train-centres", type=int, default=512, help="centres per timed training pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, default=240.0, help="skip a size predicted to take longer (s)")
    parser.add_argument("--skip-quality", action="store_true", help="scaling only")
    parser.add_argument("--facet", action="store_true", help="add FaceT and FaceT+Infomap to the quality table")
    args = parser.parse_args(argv)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, device {resolve_device(args.device)}")
    scaling = run_scaling(args.sizes, args.train_centres, args.device, args.budget)
    result: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "device": str(resolve_device(args.device))},
                    "scaling": scaling}
    print("\nScaling (small preset, k=64, 256-d)\n" + _format_scaling(scaling))
    if not args.skip_quality:
        quality = run_quality(args.facet)
        print("\nQuality: 300 labelled -> 300 unseen generated identities (64-d, k=16)\n" + format_table(quality))
        print("\nEncoding ablation (Clusformer+UF)")
        ablation = run_ablation()
        print(ablation.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        result["quality"] = quality.to_dict(orient="records")
        result["quality_attrs"] = dict(quality.attrs)
        result["ablation"] = ablation.to_dict(orient="records")
    save_json(RESULTS, result)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
