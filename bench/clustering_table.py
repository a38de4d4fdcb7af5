"""One clustering table: kNN-UF, Infomap, FaceT (+UF, +Infomap), Clusformer (+UF, +Infomap).

Two data sets, each with a labelled part the methods are fitted / tuned on (thresholds included)
and a disjoint unlabelled part they cluster and are scored on:

* generated MS1M-like benchmark features (``clustering.benchmark_features``, 600 labelled and 300
  unseen identities, 64-d by default: the sizes FaceT's helper measured on);
* features of the real face folders in ../shared/data (``bench.real_face_features``: a CPU-trained
  backbone on a third part of the identities; skipped when the folder is absent).

    python -m bench.clustering_table [--threads 1] [--skip-real] [--skip-benchmark]

Prints both tables with each learned method's gain over knn_uf and writes
bench/results/clustering_table.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.evaluate import format_table, run_harness
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "clustering_table.json"
METHODS = ("knn_uf", "infomap", "facet", "facet+infomap", "clusformer", "clusformer+infomap")
BASELINE = "knn_uf"
K = 30  # kNN graph of the harness (knn_uf / infomap neighbours; FaceT's hop1 and Clusformer's k are below it)

# CPU-sized learned methods: FaceT's demo preset as in its Done-when test, a small Clusformer as in its test.
FACET = {"preset": "demo", "hop1": 10, "epochs": 4}
CLUSFORMER = {"k": 16, "d_model": 64, "nhead": 4, "dim_feedforward": 128, "num_encoder_layers": 1,
              "num_decoder_layers": 1, "epochs": 8, "batch_size": 64, "lr": 2e-3, "max_train_centres": 4000}


def method_params(methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, Any]]:
    """Parameters of every learned method of ``methods`` (the baselines use the harness's k)."""
    params = {"facet": FACET, "facet+infomap": FACET, "clusformer": CLUSFORMER,
              "clusformer+infomap": {**CLUSFORMER, "partition": "infomap"}}
    return {name: dict(params[name]) for name in methods if name in params}


def with_gains(frame: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The harness frame plus ``gain_fp`` / ``gain_fb``: points of pairwise / BCubed F over ``baseline``."""
    base = frame.set_index("method").loc[baseline]
    return frame.assign(gain_fp=100 * (frame["pairwise_f"] - base["pairwise_f"]),
                        gain_fb=100 * (frame["bcubed_f"] - base["bcubed_f"]))


def print_table(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(format_table(frame))
    gains = frame[["method", "gain_fp", "gain_fb"]].rename(columns={"gain_fp": "FP gain (pts)", "gain_fb": "FB gain (pts)"})
    print(gains.to_string(index=False, float_format=lambda v: f"{v:+.1f}"))


def benchmark_case(train_ids: int, test_ids: int, dim: int, seed: int, methods: tuple[str, ...]) -> dict:
    """The harness on generated features: ``train_ids`` labelled identities, ``test_ids`` unseen ones."""
    config = BenchmarkConfig(dim=dim, nuisance_dims=max(4, 24 * dim // 256))
    splits = benchmark_splits(train_ids, [test_ids], config=config, seed=seed)
    frame = with_gains(run_harness(methods, splits.train_features, splits.train_labels, splits.test_features[0],
                                   splits.test_labels[0], K, method_params=method_params(methods), progress=True))
    title = (f"Generated benchmark features ({dim}-d, seed {seed}): fitted on {train_ids} labelled identities "
             f"({len(splits.train_labels)} samples), clustering {test_ids} unseen ({len(splits.test_labels[0])} samples)")
    print_table(title, frame)
    return {"title": title, **frame.attrs, "results": frame.to_dict("records")}


def real_case(data_dir: Path, cache_dir: Path, methods: tuple[str, ...], backbone_epochs: int | None = None) -> dict:
    """The harness on real-folder features (backbone part / labelled part / unlabelled part by identity);
    ``backbone_epochs`` overrides the CPU backbone recipe's epochs (a separate feature cache)."""
    from dataclasses import replace

    from bench.real_face_features import RealFaceConfig, real_face_features

    config = RealFaceConfig()
    if backbone_epochs is not None:
        config = replace(config, backbone=replace(config.backbone, epochs=backbone_epochs))
    feats = real_face_features(data_dir, cache_dir, config, progress=True)
    frame = with_gains(run_harness(methods, feats.labelled_features, feats.labelled_labels, feats.unlabelled_features,
                                   feats.unlabelled_labels, K, method_params=method_params(methods), progress=True))
    title = (f"Real face folders (lfw + yale_b + orl), features of a {config.backbone.trunk} backbone trained "
             f"{config.backbone.epochs} epochs: fitted on "
             f"{len(np.unique(feats.labelled_labels))} labelled identities ({len(feats.labelled_labels)} images), "
             f"clustering {len(np.unique(feats.unlabelled_labels))} unseen ({len(feats.unlabelled_labels)} images)")
    print_table(title, frame)
    return {"title": title, **frame.attrs, "features": feats.summary, "results": frame.to_dict("records")}


def main(argv: list[str] | None = None) -> None:
    from bench.real_face_features import DEFAULT_CACHE, DEFAULT_DATA

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--train-ids", type=int, default=600)
    parser.add_argument("--test-ids", type=int, default=300)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding lfw/, yale_b/, orl/")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="real-folder feature cache")
    parser.add_argument("--real-backbone-epochs", type=int, help="epochs of the real-folder backbone "
                        "(default: the CPU recipe's 12; another value trains and caches another backbone)")
    parser.add_argument("--skip-benchmark", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 when the 2 cores are shared)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if BASELINE not in methods:
        parser.error(f"--methods must include the baseline {BASELINE} (gains are measured against it)")

    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        "methods": list(methods), "k": K, "params": method_params(methods),
    }
    if not args.skip_benchmark:
        report["benchmark"] = benchmark_case(args.train_ids, args.test_ids, args.dim, args.seed, methods)
    data = Path(args.data)
    if args.skip_real:
        report["real"] = {"skipped": "--skip-real"}
    elif not data.is_dir():
        report["real"] = {"skipped": f"{data} not found"}
        print(f"\nreal face folders skipped: {data} not found")
    else:
        report["real"] = real_case(data, Path(args.cache), methods, args.real_backbone_epochs)
    report["seconds"] = time.perf_counter() - started
    save_json(RESULTS, report)
    print(f"\nwrote {RESULTS} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
