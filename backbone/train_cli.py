"""``python -m backbone.train``: train a backbone on a manifest from the command line (also the torchrun entry:
``torchrun --nproc_per_node 4 -m backbone.train ...``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from backbone.train import train_backbone
from backbone.train_config import TrainConfig
from semiface.cli import parse_assignment
from semiface.errors import SemifaceError


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Train the face embedding backbone on a manifest's labelled rows.")
    parser.add_argument("--manifest", type=Path, required=True, help="parquet manifest (label >= 0 rows are trained)")
    parser.add_argument("--image-root", type=Path, default=None, help="folder the manifest paths are relative to")
    parser.add_argument("--record-file", type=Path, default=None, help="InsightFace train.rec (rec_index column)")
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory (resumed or reused when present)")
    parser.add_argument("--config", type=Path, default=None, help="JSON file of TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field, e.g. --set epochs=20 --set trunk=resnet10t (repeatable)")
    args = parser.parse_args(argv)
    try:
        values = json.loads(args.config.read_text(encoding="utf-8")) if args.config else {}
        values.update(parse_assignment(text, "--set") for text in args.set)
        model = train_backbone(args.manifest, args.image_root, args.run_dir, TrainConfig.from_dict(values),
                               record_file=args.record_file)
    except (SemifaceError, OSError, json.JSONDecodeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if int(os.environ.get("RANK", "0")) == 0:
        print(model)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            print(f"trained by {world} processes (DDP)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
