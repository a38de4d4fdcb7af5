"""``semiface-recordio``: convert an identity image folder to InsightFace RecordIO and back, list a ``.rec``.

    semiface-recordio pack   IMAGE_ROOT OUT.rec    # OUT.rec, OUT.idx, property, OUT.parquet (manifest)
    semiface-recordio unpack IN.rec OUT_DIR         # OUT_DIR/<label>/<key>.<ext>
    semiface-recordio list   IN.rec [--out m.parquet]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from backbone.data.folder import scan_image_folder
from backbone.data.images import decode_image, image_format
from backbone.data.recordio import (
    PROPERTY_FILE,
    RecordIOReader,
    insightface_index,
    read_property,
    record_label,
    record_manifest,
    unpack,
    write_insightface_rec,
)
from semiface.errors import DataError, SemifaceError
from semiface.manifest import SPLITS, write_manifest


def pack_folder(root: Path, rec_path: Path, split: str = "labelled", skip_corrupt: bool = False,
                overwrite: bool = False, progress: bool = True) -> Path:
    """Write every image of ``root/<identity>/`` (bytes as they are, not re-encoded) to ``rec_path``.

    Returns the manifest written beside (``rec_path`` with ``.parquet``): ``rec_index``, ``label``,
    ``identity`` (the folder names), ``split``.
    """
    rec_path = Path(rec_path)
    outputs = [rec_path, rec_path.with_suffix(".idx"), rec_path.with_suffix(".parquet"), rec_path.parent / PROPERTY_FILE]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not overwrite:
        raise DataError(rec_path, f"would overwrite {', '.join(existing)}; pass --overwrite to replace them")
    frame = scan_image_folder(root, skip_corrupt=skip_corrupt, split=split)  # decodes all: no corrupt record
    first = decode_image((Path(root) / frame["path"].iloc[0]).read_bytes(), Path(root) / frame["path"].iloc[0])
    paths = tqdm(frame["path"], desc="pack", file=sys.stderr, disable=not progress)
    write_insightface_rec(rec_path, frame["label"], ((Path(root) / p).read_bytes() for p in paths),
                          image_shape=first.shape[:2])
    manifest = frame.drop(columns="path").assign(rec_index=range(1, len(frame) + 1))
    return write_manifest(manifest[["rec_index", "label", "identity", "split"]], rec_path.with_suffix(".parquet"))


def unpack_records(rec_path: Path, out_dir: Path, progress: bool = True) -> int:
    """Write each image record to ``out_dir/<label>/<key><ext>``; ``out_dir`` must not exist yet.

    Built in a temporary folder beside, renamed at the end: an interrupted run leaves nothing behind.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(out_dir, "output folder already exists; choose a new one")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with RecordIOReader(rec_path) as reader:
            keys = insightface_index(reader).image_keys
            for key in tqdm(keys, desc="unpack", file=sys.stderr, disable=not progress):
                offset = reader.offset(key)
                header, payload = unpack(reader.read_at(offset), f"{rec_path} (record {key} at byte offset {offset})")
                folder = tmp / str(record_label(header))
                folder.mkdir(exist_ok=True)
                (folder / f"{key}{image_format(payload)}").write_bytes(payload)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(keys)


def describe(rec_path: Path) -> str:
    """A few lines on what a ``.rec`` holds."""
    with RecordIOReader(rec_path) as reader:
        index = insightface_index(reader)
        lines = [f"{rec_path}: {len(reader)} records, {len(index.image_keys)} images"]
        if index.identity_ranges is not None:
            lines.append(f"InsightFace layout: header record 0, {len(index.identity_ranges)} identity records")
        else:
            lines.append("plain layout (no header record): every record is an image")
    prop = read_property(Path(rec_path).parent)
    if prop is not None:
        lines.append(f"property: {prop[0]} classes, {prop[1]}x{prop[2]} images")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semiface-recordio", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="image folder (one sub-folder per identity) -> .rec/.idx + manifest")
    p.add_argument("root", type=Path)
    p.add_argument("rec", type=Path)
    p.add_argument("--split", default="labelled", choices=SPLITS)
    p.add_argument("--skip-corrupt", action="store_true", help="leave corrupt images out (listed) instead of failing")
    p.add_argument("--overwrite", action="store_true")
    u = sub.add_parser("unpack", help=".rec -> image folder OUT_DIR/<label>/<key>.<ext>")
    u.add_argument("rec", type=Path)
    u.add_argument("out_dir", type=Path)
    ls = sub.add_parser("list", help="describe a .rec; with --out write its manifest (parquet)")
    ls.add_argument("rec", type=Path)
    ls.add_argument("--out", type=Path)
    ls.add_argument("--split", default="labelled", choices=SPLITS)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            manifest = pack_folder(args.root, args.rec, args.split, args.skip_corrupt, args.overwrite, not args.quiet)
            print(describe(args.rec))
            print(f"manifest: {manifest}")
        elif args.command == "unpack":
            n = unpack_records(args.rec, args.out_dir, not args.quiet)
            print(f"wrote {n} images under {args.out_dir}")
        else:
            print(describe(args.rec))
            if args.out is not None:
                write_manifest(record_manifest(args.rec, args.split), args.out)
                print(f"manifest: {args.out}")
    except SemifaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
