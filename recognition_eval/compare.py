"""CLI: ``python -m recognition_eval.compare [--out DIR] LABEL=results.json ...``.

Labels may contain '=' (``r=1=runs/r1/eval/results.json``): the path is what follows the last '='.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recognition_eval.report import compare
from semiface.errors import SemifaceError


def parse_entry(text: str) -> tuple[str, Path]:
    label, sep, path = text.rpartition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recognition_eval.compare", description=__doc__)
    parser.add_argument("entries", type=parse_entry, nargs="+", metavar="LABEL=PATH")
    parser.add_argument(
        "--out", type=Path, default=Path("comparison"), help="output folder (default ./comparison)"
    )
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.entries]
    if len(set(labels)) != len(labels):
        parser.error(f"labels must be distinct, got {labels}")
    try:
        path = compare(dict(args.entries), args.out)
    except (SemifaceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((path.parent / "comparison.md").read_text(encoding="utf-8"))
    print(f"written: {path.parent}/comparison.{{json,md,parquet,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
