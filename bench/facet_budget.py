"""FaceT's quality under a training budget: ``max_train_pivots`` (pivots per epoch) on generated features.

On MS1M the paper's schedule (60 epochs over ~466K pivots, batch 32) may not fit the 2-hour budget at
the step time ``bench/gpu_check.py`` measures (``facet_train``); ``max_train_pivots`` then trains each
epoch on a fresh sample of that many pivots. This bench shows what that does to quality at CPU sizes: the
generated benchmark of ``bench.clustering_table`` (600 labelled identities, 300 unseen ones, 64-d), FaceT
with that table's settings (``FACET``), trained on all its pivots each epoch and on a half and a quarter
of them, clustering the unseen part (FP / FB: pairwise / BCubed F), beside plain Infomap.

    python -m bench.facet_budget [--seeds 0 100] [--fractions 1 0.5 0.25] [--threads 1]

Prints a table and writes bench/results/facet_budget.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch

from bench.clustering_table import FACET, K
from bench.measure import machine_info
from clustering.benchmark_features import BenchmarkConfig, benchmark_splits
from clustering.evaluate import run_harness
from clustering.facet import FaceTConfig
from clustering.identities import split_by_identity
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "facet_budget.json"


def budget_rows(seed: int, fractions: list[float], infomap: bool = True, train_ids: int = 600, test_ids: int = 300,
                dim: int = 64) -> list[dict]:
    """One row per budget (and one for plain Infomap) on the generated draw ``seed``."""
    config = BenchmarkConfig(dim=dim, nuisance_dims=max(4, 24 * dim // 256))
    splits = benchmark_splits(train_ids, [test_ids], config=config, seed=seed)
    data = (splits.train_features, splits.train_labels, splits.test_features[0], splits.test_labels[0])
    facet = FaceTConfig.preset(FACET["preset"], **{k: v for k, v in FACET.items() if k != "preset"})
    pivots = len(split_by_identity(splits.train_labels, facet.val_fraction, facet.seed)[0])
    rows = []
    for fraction in fractions:
        budget = None if fraction >= 1 else math.ceil(fraction * pivots)
        frame = run_harness(["facet"], *data, K, method_params={"facet": {**FACET, "max_train_pivots": budget}})
        rows.append({"seed": seed, "method": "facet", "pivots_per_epoch": budget or pivots, "fraction": fraction,
                     **_scores(frame)})
        print(rows[-1], flush=True)
    if infomap:
        rows.append({"seed": seed, "method": "infomap", "pivots_per_epoch": None, "fraction": None,
                     **_scores(run_harness(["infomap"], *data, K))})
    return rows


def _scores(frame: pd.DataFrame) -> dict:
    row = frame.iloc[0]
    return {"pairwise_f": float(row["pairwise_f"]), "bcubed_f": float(row["bcubed_f"]), "fit_seconds": float(row["fit_seconds"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 100], help="generated draws")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25],
                        help="pivots per epoch, as a share of the training pivots (1: all, no budget)")
    parser.add_argument("--skip-infomap", action="store_true", help="no plain Infomap row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for seed in args.seeds for row in budget_rows(seed, args.fractions, not args.skip_infomap)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    save_json(args.out, {"machine": machine_info(), "facet": FACET, "k": K, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
