"""``make demo``: the r_U/L sweep on generated faces, on the CPU, in about ten minutes on 2 cores.

Runs ``compare-ratios`` (lower bound, r_U/L 1, 3, 5, upper bound) with FaceT's demo preset and a
small ResNet (timm ``resnet10t``) at 32 px, then prints where the run directory, the table and
the plots are, and the dashboard address when ``PREFECT_API_URL`` points at a Prefect server.
Without one, Prefect starts a temporary local server for the run. A second ``make demo`` reuses
every stage (the run directory is a cache). ``python -m flows.demo --help`` lists the options.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

# Sized for 2 CPU cores: 16 labelled identities x 6 images, an unlabelled pool of 5 x N_L images,
# 16 probe identities, 400 one-image distractors.
DEMO_DATA = {"n_labelled_ids": 16, "n_unlabelled_ids": 80, "n_probe_ids": 16, "n_distractor_ids": 400,
             "images_per_id": 6, "difficulty": 0.3}
DEMO_PARAMETERS: dict[str, Any] = {
    "ratios": [1.0, 3.0, 5.0],
    "data_source": "demo",
    "data_options": DEMO_DATA,
    "method": "facet",
    "method_params": {"preset": "demo"},
    "backbone": "resnet10t",
    "image_size": 32,
    "epochs": 6,
    "train_options": {"batch_size": 32, "lr": 0.05, "warmup_epochs": 0.5},
    "k": 31,
    "distractor_sizes": [10, 100, 400],
    "extract_batch_size": 128,
    "device": "cpu",
    "num_workers": 0,
    "max_parallel": 1,
    "seed": 0,
}


def dashboard_url(flow_run_id: object) -> str | None:
    """The flow run's page on the Prefect UI when PREFECT_API_URL names a server, else None."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    return f"{api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/demo", help="run directory (default runs/demo; reused as a cache)")
    parser.add_argument("--epochs", type=int, default=DEMO_PARAMETERS["epochs"], help="epochs of each training")
    parser.add_argument("--device", default=DEMO_PARAMETERS["device"], help="cpu (default), cuda or auto")
    args = parser.parse_args(argv)
    # Without PREFECT_API_URL Prefect starts a temporary server; on a busy 2-core machine it may need
    # more than the default 20 s to come up. No telemetry from a demo.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from flows.compare_ratios import compare_ratios

    parameters = {**DEMO_PARAMETERS, "run_dir": args.run_dir, "epochs": args.epochs, "device": args.device}
    started = time.perf_counter()
    state = compare_ratios(**parameters, return_state=True)
    summary = state.result()  # raises the flow's error when it failed
    minutes = (time.perf_counter() - started) / 60
    out = Path(summary["table"]).parent
    print(f"\nsemiface demo finished in {minutes:.1f} min")
    print(f"run directory: {Path(args.run_dir).resolve()}")
    print(f"table:         {Path(summary['table']).resolve()}")
    print(f"plot:          {Path(summary['plot']).resolve()}")
    for name, run in summary["runs"].items():
        for key in ("results_before", "results_after"):
            if key in run:
                print(f"  {name} {key.removeprefix('results_')}: {Path(run[key]).parent.resolve()}/*.png")
    url = dashboard_url(state.state_details.flow_run_id)
    if url:
        print(f"dashboard:     {url}")
    print("\n" + (out / "comparison.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
