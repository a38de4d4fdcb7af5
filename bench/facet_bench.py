"""FaceT speed, memory and quality on generated MS1M-like features.

Speed (per N and hop1): kNN build seconds, training steps/s (batch ``--batch`` pivots, the real
``train_model`` step: RE over every node of the batch's sequences, LP, loss, AdamW), inference
nodes/s (RE once per node, then LP per pivot), partition seconds, end-to-end clustering seconds
(kNN + inference + union-find) and peak memory (process RSS on CPU, CUDA max allocated on GPU).
The device is ``resolve_device("auto")``: CUDA with bf16 autocast when present.

Quality: FaceT + union-find, FaceT + Infomap, kNN + union-find and Infomap on the kNN graph,
each trained / tuned on a labelled part and scored on an unlabelled test part (FP, FB, NMI).

    python -m bench.facet_bench [--sizes 10000 50000] [--hop1 20 150] [--dim 256] [--quality-dim 64]

Prints two tables and writes bench/results/facet_bench.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.measure import PeakRss
from clustering.base import make_method
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits, generate_benchmark_features
from clustering.facet import FaceTConfig, FaceTModel
from clustering.facet.infer import link_probabilities
from clustering.facet.neighbours import neighbour_table
from clustering.facet.train import TrainData, train_model
from clustering.knn import build_knn
from clustering.metrics import evaluate_partition
from clustering.partition import partition_links
from semiface.atomic import save_json
from semiface.devices import resolve_device

RESULTS = Path(__file__).resolve().parent / "results" / "facet_bench.json"


def _features(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` generated features (identities drawn until the count is reached), cut to ``n``."""
    config = BenchmarkConfig(dim=dim, nuisance_dims=max(4, 24 * dim // 256))
    features, labels = generate_benchmark_features(max(1, n // 17), config=config, seed=seed)
    while len(features) < n:
        features, labels = generate_benchmark_features(int(len(np.unique(labels)) * 1.2) + 1, config=config, seed=seed)
    return features[:n], labels[:n]


def _peak_bytes(device: torch.device, rss: PeakRss) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak


def speed_case(n: int, hop1: int, dim: int, train_steps: int, batch: int, device: torch.device) -> dict:
    """One row of the speed table (demo-sized model, ``hop1`` as given)."""
    cfg = FaceTConfig.demo(hop1=hop1, batch_size=batch, epochs=1, device=device.type, warmup_steps=0)
    features, labels = _features(n, dim)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        started = time.perf_counter()
        knn = build_knn(features, hop1 + 1, device=device.type)
        knn_s = time.perf_counter() - started
        table = neighbour_table(knn.nbrs, max(hop1, cfg.hop2))
        torch.manual_seed(0)
        model = FaceTModel(dim, cfg).to(device)
        # A step's cost depends on batch, hop1 and hop2, not on N: one epoch over ``train_steps``
        # batches of the first rows (with their own kNN table) times it.
        m = min(n, train_steps * batch)
        sub_table = neighbour_table(build_knn(features[:m], hop1 + 1, device=device.type).nbrs, max(hop1, cfg.hop2))
        data = TrainData(*(torch.as_tensor(a).to(device) for a in (features[:m], labels[:m], sub_table)))
        started = time.perf_counter()
        train_model(model, cfg, data)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        probs = link_probabilities(model, features, table, cfg, device)
        infer_s = time.perf_counter() - started
        started = time.perf_counter()
        keep = probs[:, 1:] > 0.5
        src = np.repeat(np.arange(n), keep.sum(1))
        partition_links(n, src, table[:, 1 : probs.shape[1]][keep], probs[:, 1:][keep], tau=0.5)
        partition_s = time.perf_counter() - started
    steps = int(np.ceil(m / batch))
    return {
        "n": n, "hop1": hop1, "dim": dim, "device": device.type, "knn_s": knn_s,
        "train_steps_per_s": steps / train_s, "train_epoch_s_est": train_s / steps * np.ceil(n / batch),
        "infer_nodes_per_s": n / infer_s, "partition_s": partition_s,
        "end_to_end_s": knn_s + infer_s + partition_s, "peak_mib": _peak_bytes(device, rss) / 2**20,
    }


def quality_table(train_identities: int, test_identities: int, dim: int, epochs: int, seed: int) -> pd.DataFrame:
    """FP/FB/NMI of FaceT (+UF, +Infomap) and the baselines on a test part, all tuned on the labelled part."""
    config = BenchmarkConfig(dim=dim, nuisance_dims=max(4, 24 * dim // 256))
    splits = benchmark_splits(train_identities, [test_identities], config=config, seed=seed)
    test_x, test_y = splits.test_features[0], splits.test_labels[0]
    methods = {
        "knn_uf": make_method("knn_uf", k=30),
        "infomap": make_method("infomap"),
        "facet+uf": make_method("facet", preset="demo", hop1=10, epochs=epochs, seed=seed),
        "facet+infomap": make_method("facet+infomap", preset="demo", hop1=10, epochs=epochs, seed=seed),
        "facet only_re": make_method("facet", preset="demo", hop1=10, epochs=epochs, seed=seed, variant="only_re"),
    }
    rows = []
    for name, method in methods.items():
        started = time.perf_counter()
        method.fit(splits.train_features, splits.train_labels)
        predicted = method.fit_predict(test_x, None)
        scores = evaluate_partition(test_y, predicted)
        rows.append({"method": name, "tau": getattr(method, "tau_", None), "pairwise_f": scores["pairwise_f"],
                     "bcubed_f": scores["bcubed_f"], "nmi": scores["nmi"], "seconds": time.perf_counter() - started})
        print(f"  {name}: FP {scores['pairwise_f']:.4f} FB {scores['bcubed_f']:.4f}", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--hop1", type=int, nargs="+", default=[20, 150])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quality-train", type=int, default=600)
    parser.add_argument("--quality-test", type=int, default=300)
    parser.add_argument("--quality-dim", type=int, default=64)
    parser.add_argument("--quality-epochs", type=int, default=4)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args(argv)

    device = resolve_device("auto")
    speed = []
    for n in args.sizes:
        for hop1 in args.hop1:
            row = speed_case(n, hop1, args.dim, args.train_steps, args.batch, device)
            speed.append(row)
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    speed_frame = pd.DataFrame(speed)
    print("\nFaceT speed (demo model: depth 1, 2 heads x 32, projected from dim)")
    print(speed_frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    quality = None
    if not args.skip_quality:
        quality = quality_table(args.quality_train, args.quality_test, args.quality_dim, args.quality_epochs, seed=0)
        print(f"\nQuality on a generated test part ({args.quality_test} identities, dim {args.quality_dim}), "
              f"trained/tuned on {args.quality_train} labelled identities")
        print(quality.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    save_json(RESULTS, {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {device}",
        "speed": speed_frame.to_dict("records"), "quality": None if quality is None else quality.to_dict("records"),
    })
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
