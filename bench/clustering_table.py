"""One clustering table per data set: every tuned baseline beside the learned methods.

Each data set has a labelled part the methods are fitted / tuned on (thresholds included) and a
disjoint unlabelled part they cluster and are scored on:

* generated MS1M-like benchmark features (``clustering.benchmark_features``, 600 labelled and 300
  unseen identities, 64-d by default);
* real faces: the 128-d dlib descriptors of ../shared/data (lfw + yale_b + orl,
  ``bench.dlib_features``), split in two identity halves (seed 0); skipped when absent;
* with ``--backbone-real``, features of the same folders from a CPU-trained backbone
  (``bench.real_face_features``: trains one the first time, 10-25 minutes).

    python -m bench.clustering_table [--threads 1] [--skip-benchmark] [--skip-real] [--backbone-real]

Prints each table with every learned method's lead over the best tuned baseline (per metric:
the best FP and the best FB of knn_uf, infomap, hac, dbscan) and over plain Infomap, and writes
bench/results/clustering_table.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.measure import machine_info
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.evaluate import format_table, run_harness
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "clustering_table.json"
BASELINES = ("knn_uf", "infomap", "hac", "dbscan")
LEARNED = ("pair_gbdt", "facet", "facet+infomap", "clusformer", "clusformer+infomap")
METHODS = BASELINES + LEARNED
K = 30  # kNN graph of the harness: the baselines' neighbours, FaceT's hop1 + 1 and Clusformer's k

# CPU-sized learned methods, fixed a priori (never tuned on a part being clustered).
# FaceT's link rule is tuned on the labelled rows like tau (any / mutual / average, best tune score);
# its Infomap weighs links by the square root of their odds (FaceT's default, written out for the record).
FACET = {"preset": "demo", "hop1": 29, "epochs": 8, "link_rule": "tuned", "infomap_weight": "sqrt_odds"}
CLUSFORMER = {"k": 30, "d_model": 64, "nhead": 4, "dim_feedforward": 128, "num_encoder_layers": 1,
              "num_decoder_layers": 1, "epochs": 8, "batch_size": 64, "lr": 2e-3}


def method_params(methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, Any]]:
    """Parameters of every learned method of ``methods`` (the baselines use the harness's k)."""
    params = {"facet": FACET, "facet+infomap": FACET, "clusformer": CLUSFORMER, "clusformer+infomap": CLUSFORMER}
    return {name: dict(params[name]) for name in methods if name in params}


def with_leads(frame: pd.DataFrame) -> pd.DataFrame:
    """The harness frame plus points of FP / FB over the best baseline of each metric and over Infomap."""
    baselines = frame[frame["method"].isin(BASELINES)]
    infomap = frame.set_index("method").loc["infomap"] if "infomap" in set(frame["method"]) else None
    out = frame.assign(
        lead_fp=100 * (frame["pairwise_f"] - baselines["pairwise_f"].max()),
        lead_fb=100 * (frame["bcubed_f"] - baselines["bcubed_f"].max()),
    )
    if infomap is not None:
        out = out.assign(over_infomap_fp=100 * (frame["pairwise_f"] - infomap["pairwise_f"]),
                         over_infomap_fb=100 * (frame["bcubed_f"] - infomap["bcubed_f"]))
    return out


def print_table(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(format_table(frame))
    columns = {"lead_fp": "FP lead over best baseline", "lead_fb": "FB lead",
               "over_infomap_fp": "FP over infomap", "over_infomap_fb": "FB over infomap"}
    learned = frame[~frame["method"].isin(BASELINES)]
    shown = learned[["method", *[c for c in columns if c in learned]]].rename(columns=columns)
    print(shown.to_string(index=False, float_format=lambda v: f"{v:+.1f}"))


def _run(title: str, methods: tuple[str, ...], train_x, train_y, test_x, test_y, extra: dict | None = None) -> dict:
    frame = with_leads(run_harness(methods, train_x, train_y, test_x, test_y, K,
                                   method_params=method_params(methods), progress=True))
    print_table(title, frame)
    return {"title": title, **frame.attrs, **(extra or {}), "results": frame.to_dict("records")}


def benchmark_case(train_ids: int, test_ids: int, dim: int, seed: int, methods: tuple[str, ...]) -> dict:
    """The harness on generated features: ``train_ids`` labelled identities, ``test_ids`` unseen ones."""
    config = BenchmarkConfig(dim=dim, nuisance_dims=max(4, 24 * dim // 256))
    splits = benchmark_splits(train_ids, [test_ids], config=config, seed=seed)
    title = (f"Generated benchmark features ({dim}-d, seed {seed}): fitted on {train_ids} labelled identities "
             f"({len(splits.train_labels)} samples), clustering {test_ids} unseen ({len(splits.test_labels[0])} samples)")
    return _run(title, methods, splits.train_features, splits.train_labels, splits.test_features[0], splits.test_labels[0])


def dlib_case(features_dir: Path, methods: tuple[str, ...], seed: int = 0) -> dict:
    """The harness on the dlib descriptors of the real face folders, split by identity halves."""
    from bench.dlib_features import real_feature_split

    split = real_feature_split(features_dir, seed=seed)
    title = f"Real faces, {split.describe()} (identity split seed {seed})"
    return _run(title, methods, split.labelled_features, split.labelled_labels, split.unlabelled_features,
                split.unlabelled_labels)


def backbone_case(data_dir: Path | None, cache_dir: Path | None, methods: tuple[str, ...],
                  backbone_epochs: int | None = None) -> dict:
    """The harness on features of the real folders from a CPU-trained backbone (backbone / labelled /
    unlabelled parts by identity); ``backbone_epochs`` overrides the recipe's epochs (another cache entry).
    ``None`` folders take ``bench.real_face_features``' defaults."""
    from dataclasses import replace

    # Imported here: it trains a backbone (albumentations), which the other tables never need.
    from bench.real_face_features import DEFAULT_CACHE, DEFAULT_DATA, RealFaceConfig, real_face_features

    config = RealFaceConfig()
    if backbone_epochs is not None:
        config = replace(config, backbone=replace(config.backbone, epochs=backbone_epochs))
    feats = real_face_features(data_dir or DEFAULT_DATA, cache_dir or DEFAULT_CACHE, config, progress=True)
    title = (f"Real face folders, features of a {config.backbone.trunk} backbone trained {config.backbone.epochs} "
             f"epochs on CPU: fitted on {len(np.unique(feats.labelled_labels))} labelled identities "
             f"({len(feats.labelled_labels)} images), clustering {len(np.unique(feats.unlabelled_labels))} unseen "
             f"({len(feats.unlabelled_labels)} images)")
    return _run(title, methods, feats.labelled_features, feats.labelled_labels, feats.unlabelled_features,
                feats.unlabelled_labels, {"features": feats.summary})


def main(argv: list[str] | None = None) -> None:
    from bench.dlib_features import DEFAULT_FEATURES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--train-ids", type=int, default=600)
    parser.add_argument("--test-ids", type=int, default=300)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated features and of the real identity split")
    parser.add_argument("--features", default=str(DEFAULT_FEATURES), help="folder holding dlib_128.npy and its labels")
    parser.add_argument("--skip-benchmark", action="store_true")
    parser.add_argument("--skip-real", action="store_true", help="skip the dlib features of the real faces")
    parser.add_argument("--backbone-real", action="store_true",
                        help="also cluster features of the real folders from a CPU-trained backbone")
    parser.add_argument("--data", type=Path, help="folder holding lfw/, yale_b/, orl/ (--backbone-real; default ../shared/data)")
    parser.add_argument("--cache", type=Path, help="backbone feature cache (--backbone-real; default bench/results/real_faces)")
    parser.add_argument("--real-backbone-epochs", type=int, help="epochs of the --backbone-real backbone")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 when the 2 cores are shared)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not set(BASELINES) & set(methods):
        parser.error(f"--methods must include at least one baseline of {', '.join(BASELINES)} (leads are measured against them)")

    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_info(), "methods": list(methods), "k": K, "params": method_params(methods)}
    if not args.skip_benchmark:
        report["benchmark"] = benchmark_case(args.train_ids, args.test_ids, args.dim, args.seed, methods)
    features_dir = Path(args.features)
    if args.skip_real:
        report["real"] = {"skipped": "--skip-real"}
    elif not features_dir.is_dir():
        report["real"] = {"skipped": f"{features_dir} not found"}
        print(f"\nreal face features skipped: {features_dir} not found")
    else:
        report["real"] = dlib_case(features_dir, methods, args.seed)
    if args.backbone_real:
        report["backbone_real"] = backbone_case(args.data, args.cache, methods, args.real_backbone_epochs)
    report["seconds"] = time.perf_counter() - started
    save_json(RESULTS, report)
    print(f"\nwrote {RESULTS} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
