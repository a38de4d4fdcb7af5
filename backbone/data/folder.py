"""Scan an image folder with one sub-folder per identity (the LFW / CASIA-WebFace layout) into a manifest."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from backbone.data.images import read_image
from semiface.errors import DataError
from semiface.manifest import IMAGE_EXTENSIONS, SPLITS

log = logging.getLogger(__name__)


class CorruptImagesError(DataError):
    """A scan found corrupt or unreadable images; ``corrupt`` lists every one as (path, reason)."""

    def __init__(self, root: str | Path, corrupt: list[tuple[str, str]]) -> None:
        self.corrupt = corrupt
        shown = "; ".join(f"{path} ({reason})" for path, reason in corrupt[:10])
        more = f"; and {len(corrupt) - 10} more" if len(corrupt) > 10 else ""
        super().__init__(
            root,
            f"{len(corrupt)} corrupt or unreadable image(s): {shown}{more}. "
            "Fix or remove them, or scan with skip_corrupt=True to leave them out",
        )


def scan_image_folder(
    root: str | Path,
    *,
    verify: bool = True,
    skip_corrupt: bool = False,
    split: str = "labelled",
    workers: int = 4,
) -> pd.DataFrame:
    """List ``root/<identity>/<image>`` as a manifest frame.

    Columns: ``path`` (relative to ``root``, POSIX), ``identity`` (folder name), ``label`` (int64,
    contiguous 0..C-1 in sorted identity order), ``split``. Files whose extension is not an image
    type and hidden entries are ignored; top-level files (README...) too.

    With ``verify`` every image is decoded (``workers`` threads). Corrupt ones raise
    :class:`CorruptImagesError` listing all of them, or with ``skip_corrupt`` are left out, logged and
    listed in ``frame.attrs["skipped_corrupt"]``. Errors: missing root, no identity folder, an identity
    folder without images.
    """
    root = Path(root)
    if split not in SPLITS:
        raise DataError(root, f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if not root.exists():
        raise DataError(root, "image folder not found")
    if not root.is_dir():
        raise DataError(root, "not a folder (expected one sub-folder per identity)")
    identity_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not identity_dirs:
        raise DataError(root, "no identity sub-folders (expected root/<identity>/<image>)")
    rows = []
    for folder in identity_dirs:
        files = sorted(
            f for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(folder, "empty identity folder (no image files); remove it or add images")
        rows.extend((f.relative_to(root).as_posix(), folder.name) for f in files)
    frame = pd.DataFrame(rows, columns=["path", "identity"])
    skipped: list[tuple[str, str]] = []
    if verify:
        corrupt = find_corrupt_images(root, frame["path"], workers)
        if corrupt and not skip_corrupt:
            raise CorruptImagesError(root, corrupt)
        if corrupt:
            log.warning("%s: left out %d corrupt image(s): %s", root, len(corrupt), corrupt)
            frame = frame[~frame["path"].isin({path for path, _ in corrupt})].reset_index(drop=True)
            skipped = corrupt
    identities = sorted(frame["identity"].unique())
    frame["label"] = frame["identity"].map({name: i for i, name in enumerate(identities)}).astype("int64")
    frame["split"] = split
    frame.attrs["skipped_corrupt"] = skipped
    return frame


def find_corrupt_images(root: str | Path, paths: Iterable[str], workers: int = 4) -> list[tuple[str, str]]:
    """Decode every image; return (path, reason) for those that fail, in input order."""
    root = Path(root)

    def problem(path: str) -> str | None:
        try:
            read_image(root / path)
        except DataError as exc:
            return exc.problem
        return None

    paths = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # Pillow releases the GIL while decoding
        problems = list(pool.map(problem, paths))
    return [(path, why) for path, why in zip(paths, problems, strict=True) if why is not None]
