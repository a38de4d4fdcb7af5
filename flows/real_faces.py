"""The whole loop on real faces: ``compare-ratios`` over an identity folder (by default LFW from
../shared/data), on the CPU.

Identities are split into labelled / unlabelled / probe / distractor roles; the first backbone (a
small ResNet at 48 px) trains on the labelled ones; the unlabelled ones are clustered, by default
from dlib's pretrained face descriptors (``cluster_features="dlib"``, extra ``reference``: a CPU
backbone trained on a few hundred people clusters new faces poorly), with FaceT + Infomap fitted on
the labelled identities; the backbone is fine-tuned on labelled + pseudo-labelled images and
identification is measured on the probe identities, beside the lower and upper bounds.

    python -m flows.real_faces [--data-path ../shared/data/lfw] [--cluster-features backbone]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from flows.demo import DEMO_PARAMETERS, prepare_local_run, print_outcome

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
# LFW: most identities have one image; a third of them labelled, the pool to cluster a little more.
SPLITS = {"labelled": 0.3, "unlabelled": 0.4, "probe": 0.1, "distractor": 0.2}
# The demo's settings, but for the real-face folder and the FaceT clusterer.
REAL_PARAMETERS: dict[str, Any] = {
    **DEMO_PARAMETERS,
    "ratios": [1.0],
    "data_source": "folder",
    "data_options": SPLITS,
    "method": "facet",
    "method_params": {"preset": "demo", "hop1": 20, "epochs": 6, "partition": "infomap"},
    # The clusterer clusters dlib's descriptors, not the first backbone's features: no labelled identities
    # need keeping from the backbone for it (the demo's clusterer settings are not the ones measured here).
    "clusterer_holdout": 0.0,
    "clusterer_density_match": False,
    "min_confidence": 0.0,
    "backbone": "resnet10t",
    "epochs": 12,
    "retrain_options": {"epochs": 6},
    "distractor_sizes": [10, 100, 1000],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.real_faces", description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", default=str(DEFAULT_DATA), help="identity folder: ROOT/<identity>/<image>")
    parser.add_argument("--run-dir", default="runs/real-faces", help="run directory (reused as a cache)")
    parser.add_argument("--cluster-features", default="dlib", choices=("dlib", "backbone"),
                        help="what the clusterer clusters (default dlib)")
    parser.add_argument("--epochs", type=int, default=REAL_PARAMETERS["epochs"], help="epochs of the first backbone")
    parser.add_argument("--device", default=REAL_PARAMETERS["device"], help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    prepare_local_run(args.threads)
    from flows.compare_ratios import compare_ratios

    started = time.perf_counter()
    state = compare_ratios(**{**REAL_PARAMETERS, "data_path": args.data_path, "run_dir": args.run_dir,
                              "cluster_features": args.cluster_features, "epochs": args.epochs,
                              "device": args.device}, return_state=True)
    print_outcome(state, args.run_dir, started, "semiface real-faces run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
