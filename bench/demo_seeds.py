"""The demo's claim over seeds: ``python -m flows.demo --seed S`` for several seeds, then the mean and spread of
the share of the lower-to-upper-bound gap each ratio closes, and of the kept pseudo-labels' purity.

Each seed runs in its own process and run directory (``runs/demo-seeds/seed-S``: a rerun reuses its stages),
``--parallel`` at a time (each demo training uses one torch thread). A seed's table is read from its
``comparison.json``; a seed that fails is reported as failed, not left out.

    python -m bench.demo_seeds [--seeds 0 1 2] [--parallel 2] [--method clusformer]

Prints one row per seed and the mean / sd rows; writes bench/results/demo_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.measure import machine_info
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "demo_seeds.json"
RUNS = Path("runs/demo-seeds")


def gap_closed(rows: list[dict]) -> dict[str, float | None]:
    """Share of the gap between the lower and the upper bound's rank-1 that each ratio run closes, and its purity,
    keyed ``gap@<r>`` / ``purity@<r>``, from a comparison's rows."""
    by_run = {row["run"]: row for row in rows}
    lower, upper = by_run.get("lower-bound", {}).get("rank1"), by_run.get("upper-bound", {}).get("rank1")
    out: dict[str, float | None] = {"lower": lower, "upper": upper}
    for row in rows:
        if not row["run"].startswith("ratio-"):
            continue
        ratio = f"{row['r_U/L']:g}"
        closed = None
        if None not in (lower, upper, row["rank1"]) and upper != lower:
            closed = (row["rank1"] - lower) / (upper - lower)
        out[f"gap@{ratio}"] = closed
        out[f"purity@{ratio}"] = row["purity"]
        out[f"rank1@{ratio}"] = row["rank1"]
    return out


def run_seed(seed: int, method: str, runs: Path) -> dict:
    """One demo run (a fresh process); its figures, or its failure and the end of its output."""
    run_dir = runs / f"seed-{seed}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.demo", "--seed", str(seed), "--method", method,
                           "--run-dir", str(run_dir)], capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    table = run_dir / f"compare-{method}" / "comparison.json"
    if done.returncode != 0 or not table.exists():
        return {"seed": seed, "minutes": minutes, "failed": (done.stdout + done.stderr)[-2000:]}
    return {"seed": seed, "minutes": minutes, **gap_closed(json.loads(table.read_text())["rows"])}


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean, sd, min and max of every figure over the seeds that finished."""
    done = [row for row in rows if "failed" not in row]
    keys = [key for key in (done[0] if done else {}) if key not in ("seed",)]
    summary = {}
    for key in keys:
        values = [row[key] for row in done if row.get(key) is not None]
        if values:
            summary[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "min": min(values), "max": max(values)}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="demo runs at a time (default 2: one a core)")
    parser.add_argument("--method", default="clusformer")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"parent of the seeds' run directories ({RUNS})")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda seed: run_seed(seed, args.method, args.runs), args.seeds))
    summary = summarise(rows)
    columns = sorted(summary, key=lambda key: key == "minutes")  # the run time last
    print("seed  " + "  ".join(f"{c:>10}" for c in columns))
    for row in rows:
        if "failed" in row:
            print(f"{row['seed']:>4}  failed after {row['minutes']:.1f} min:\n{row['failed']}")
            continue
        print(f"{row['seed']:>4}  " + "  ".join(_cell(row.get(c)) for c in columns))
    for stat in ("mean", "sd"):
        print(f"{stat:>4}  " + "  ".join(_cell(summary[c][stat]) for c in columns))
    save_json(args.out, {"machine": machine_info(), "method": args.method, "seeds": rows, "summary": summary})
    print(f"wrote {args.out}")
    return 0 if all("failed" not in row for row in rows) else 1


def _cell(value: float | None) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
