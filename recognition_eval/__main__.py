"""CLI: ``python -m recognition_eval --features F --manifest M --out DIR``; prints the summary as JSON.

MegaFace Challenge 1 features (FaceScrub probes, MegaFace distractors) computed elsewhere:
``--probe-list facescrub_features_list.json --probe-features P --distractor-list
megaface_features_list.json_1000000_1 --distractor-features D`` (P, D: a .npy in list order, or the
devkit's folder of per-image feature files with ``--feature-suffix _name.bin``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recognition_eval.identification import DEFAULT_MAX_RANK, DEFAULT_SIZES
from recognition_eval.megaface import evaluate_megaface_features
from recognition_eval.report import evaluate
from recognition_eval.scan import DEFAULT_MAX_BYTES
from semiface.errors import SemifaceError


def parse_size(text: str) -> int:
    """'1000', '1K', '1M' -> int."""
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    try:
        return int(text[:-1] if scale > 1 else text) * scale
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a distractor-set size: {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recognition_eval", description=__doc__)
    parser.add_argument("--features", type=Path, help="features .npy (rows in manifest order)")
    parser.add_argument("--manifest", type=Path, help="parquet manifest with probe/distractor rows")
    megaface = parser.add_argument_group("MegaFace Challenge 1 features (instead of --features/--manifest)")
    megaface.add_argument("--probe-list", type=Path, help="FaceScrub list: devkit JSON (path, id) or path<TAB>id lines")
    megaface.add_argument("--probe-features", type=Path, help=".npy in list order, or a devkit feature folder")
    megaface.add_argument("--distractor-list", type=Path, help="distractor list: devkit JSON (path) or a path a line")
    megaface.add_argument("--distractor-features", type=Path, help=".npy in list order, or a devkit feature folder")
    megaface.add_argument("--feature-suffix", default="", help="devkit feature file suffix, e.g. _arcface.bin")
    megaface.add_argument("--probe-noise", type=Path, help="probe images to drop, one a line (e.g. facescrub_noises.txt)")
    megaface.add_argument("--distractor-noise", type=Path, help="distractor images to drop (e.g. megaface_noises.txt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES), help="e.g. 10 100 1K 1M"
    )
    parser.add_argument("--max-rank", type=int, default=DEFAULT_MAX_RANK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--max-mib", type=int, default=DEFAULT_MAX_BYTES // 2**20, help="working-memory budget"
    )
    parser.add_argument("--train-identities", type=Path, help="text file, one training identity name a line")
    args = parser.parse_args(argv)
    lists = (args.probe_list, args.probe_features, args.distractor_list, args.distractor_features)
    if not ((args.features and args.manifest) or all(lists)) or (args.features or args.manifest) and any(lists):
        parser.error("give --features and --manifest, or the four MegaFace options --probe-list, --probe-features, "
                     "--distractor-list and --distractor-features")
    if args.features and (args.probe_noise or args.distractor_noise):
        parser.error("--probe-noise and --distractor-noise go with the MegaFace options, not --features/--manifest")
    train = None
    try:
        if args.train_identities is not None:
            train = [line.strip() for line in args.train_identities.read_text(encoding="utf-8").splitlines()]
            train = [name for name in train if name]
        options = {"sizes": args.sizes, "seed": args.seed, "device": args.device, "train_identities": train,
                   "max_rank": args.max_rank, "max_bytes": args.max_mib * 2**20, "progress": True}
        if args.features:
            summary = evaluate(args.features, args.manifest, args.out, **options)
        else:
            summary = evaluate_megaface_features(*lists, args.out, suffix=args.feature_suffix, probe_noise=args.probe_noise,
                                                 distractor_noise=args.distractor_noise, **options)
    except (SemifaceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
