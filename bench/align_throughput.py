"""Alignment throughput (images/s) of ``recognition_eval.face_align.align_images``: read, detect, five
landmarks, warp to the ArcFace template, write, for real LFW photos (250 x 250 JPEG) from ../shared/data.

    python -m bench.align_throughput [--images 300] [--size 112] [--workers 1 2]

The whole call is timed (dlib's models loaded in each process included); peak RSS is this process's (worker
processes not counted). Prints a table and writes
bench/results/align_throughput.json. The time for a MegaFace-sized set printed beside it is an
extrapolation (its photos are larger than LFW's crops, so detection there is slower).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.measure import machine_info, run_measured
from recognition_eval.face_align import align_images
from semiface.atomic import save_json
from semiface.markdown import markdown_table

RESULTS = Path(__file__).resolve().parent / "results" / "align_throughput.json"
LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
MEGAFACE_IMAGES = 1_027_060 + 3_530  # devkit: MegaFace distractor photos + FaceScrub probes used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.align_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    if not LFW.is_dir():
        print(f"LFW not found at {LFW}")
        return 2
    paths = [p.relative_to(LFW).as_posix() for p in sorted(LFW.glob("*/*.jpg"))[: args.images]]
    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as out:
            summary, seconds, peak_mb = run_measured(
                lambda out=out, workers=workers: align_images(LFW, paths, out, args.size, workers=workers))
        rate = len(paths) / seconds
        rows.append({"workers": workers, "images": len(paths), "no_face": len(summary.no_face),
                     "seconds": round(seconds, 2), "images_per_s": round(rate, 1), "peak_rss_mb": round(peak_mb),
                     "megaface_hours_extrapolated": round(MEGAFACE_IMAGES / rate / 3600, 1)})
    print(markdown_table(rows))
    save_json(RESULTS, {"machine": machine_info(), "source": str(LFW), "size": args.size, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
