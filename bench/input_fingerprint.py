"""What fingerprinting external inputs by content costs the stage cache (``semiface.digests``).

A generated folder of --files small files (one sub-folder per 50, like identity folders; random bytes of
2-6 KB each) is fingerprinted: first with nothing remembered (every file read and hashed), then again
(the per-file digests remembered under the cache root: one stat per file), after one file changed, as a
copy made without timestamps (every file read again: same fingerprint), and as the listed files of a
manifest (``files_digest``, what the data stage records for the stages that read images). Beside them,
the listing the stage cache made before (relative path, size and mtime of every file, no content) shows
what a rerun cost then. A --big-mib file is hashed whole and by samples. Files were just written, so
they are read from the page cache: this measures hashing and file-system calls, not the disk.

    python -m bench.input_fingerprint [--files 100000] [--big-mib 2048]

Prints a table and writes bench/results/input_fingerprint.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bench.measure import machine_info, run_measured
from semiface import digests
from semiface.atomic import save_json

RESULTS = Path(__file__).resolve().parent / "results" / "input_fingerprint.json"
PER_FOLDER = 50


def make_folder(root: Path, files: int, seed: int = 0) -> list[str]:
    """``files`` random files of 2-6 KB under ``root/<folder>/<file>``; their relative paths."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2048, 6144, files)
    block = rng.integers(0, 256, int(sizes.max()) + files, dtype=np.uint8).tobytes()
    rels = []
    for i, size in enumerate(sizes):
        rel = f"id{i // PER_FOLDER:05d}/{i % PER_FOLDER:02d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(block[i : i + int(size)])
        rels.append(rel)
    return rels


def size_and_mtime_listing(root: Path) -> int:
    """What the stage cache computed before: (relative path, size, mtime) of every file, no content read."""
    count = 0
    for folder, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(folder, name))
            _ = (os.path.relpath(os.path.join(folder, name), root), stat.st_size, stat.st_mtime_ns)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--big-mib", type=int, default=2048, help="size of the large file (0: leave it out)")
    parser.add_argument("--work-dir", default=None, help="where to generate the data (default: a temporary folder)")
    args = parser.parse_args()

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        data, memo = work / "data", work / "stages" / ".digests"
        rels = make_folder(data, args.files)

        def case(name: str, fn, expect=None) -> object:
            value, seconds, peak_mb = run_measured(fn)
            if expect is not None and value != expect:
                raise AssertionError(f"{name}: fingerprint {value} != {expect}")
            rows.append({"case": name, "files": args.files, "seconds": round(seconds, 3),
                         "us_per_file": round(1e6 * seconds / args.files, 1), "peak_mb": round(peak_mb, 1)})
            return value

        case("before: size + mtime listing (no content)", lambda: size_and_mtime_listing(data))
        first = case("first fingerprint (every file read)", lambda: digests.path_fingerprint(data, memo))
        memo_bytes = sum(p.stat().st_size for p in memo.iterdir())
        case("rerun (digests remembered)", lambda: digests.path_fingerprint(data, memo), first)
        (data / rels[0]).write_bytes(b"changed")
        state = case("rerun, one file changed", lambda: digests.path_fingerprint(data, memo))
        assert state != first
        copy = Path(shutil.copytree(data, work / "copy", copy_function=shutil.copyfile))
        case("copy without timestamps (every file read)", lambda: digests.path_fingerprint(copy, memo), state)
        case("listed files of a manifest (remembered)", lambda: digests.files_digest(data, rels, memo))
        case("no memory (every file read)", lambda: digests.path_fingerprint(data), state)

        if args.big_mib:
            big = work / "big.rec"
            chunk = np.random.default_rng(1).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
            with open(big, "wb") as handle:
                for _ in range(args.big_mib // 64):
                    handle.write(chunk)
            size = big.stat().st_size
            for name, fn in (("large file, whole sha256", lambda: digests.file_sha256(big)),
                             ("large file, sampled (64 x 1 MiB)", lambda: digests.content_digest(big))):
                _, seconds, peak_mb = run_measured(fn)
                if "sampled" in name and size <= digests.FULL_HASH_LIMIT:
                    continue
                rows.append({"case": name, "files": 1, "mib": size >> 20, "seconds": round(seconds, 3),
                             "peak_mb": round(peak_mb, 1)})

    print(f"{'case':48s} {'files':>8s} {'seconds':>9s} {'us/file':>9s} {'peak MB':>8s}")
    for row in rows:
        print(f"{row['case']:48s} {row['files']:>8} {row['seconds']:>9.3f} {row.get('us_per_file', ''):>9} "
              f"{row['peak_mb']:>8.1f}")
    print(f"memo on disk: {memo_bytes / 2**20:.1f} MiB for the folder's {args.files} files")
    save_json(RESULTS, {"machine": machine_info(), "files": args.files, "memo_bytes": memo_bytes,
                        "scheme": digests.SCHEME, "rows": rows})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
