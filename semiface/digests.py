"""Content digests: of a file (whole, or sampled when very large), of a folder (its files' relative paths and
content digests), remembered per file between runs so that a rerun reads only the files that changed.

Shared by the stage cache (fingerprints of external inputs) and the training run identity.

A digest depends on bytes only, never on where a file lives or when it was written: data copied without
keeping timestamps, moved, or mounted elsewhere keeps its digests. Files above ``FULL_HASH_LIMIT`` are
hashed by samples (their size and ``SAMPLE_BLOCKS`` evenly spaced blocks, the first and the last among
them): hashing a 30 GB RecordIO file whole would add minutes to every new copy of it. The trade-off: an
edit of such a file that keeps its size and touches none of the sampled blocks goes unseen (a rewritten
or re-packed file changes nearly every block, a size change is always seen).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from semiface.atomic import atomic_path
from semiface.errors import DataError

FULL_HASH_LIMIT = 1 << 30
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_SIZE = 1 << 20
# Names the hashing rules: a memo written under other rules is another file, never read as this one's.
SCHEME = f"sha256 v1; above {FULL_HASH_LIMIT} bytes {SAMPLE_BLOCKS} blocks of {SAMPLE_BLOCK_SIZE}"
# A file's signature in the memo: when all four are unchanged, so are its bytes. ctime cannot be set from
# user space (``cp -p``, ``touch -d`` set mtime only), so a rewrite that restores the mtime is still seen.
_SIGNATURE = ("size", "mtime_ns", "ctime_ns", "inode")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_digest(path: str | Path, size: int | None = None) -> str:
    """The file's sha256 (hex); above ``FULL_HASH_LIMIT`` bytes ``sampled:`` + the sha256 of its size and
    ``SAMPLE_BLOCKS`` evenly spaced blocks of ``SAMPLE_BLOCK_SIZE`` bytes (see the module docstring)."""
    size = os.stat(path).st_size if size is None else size
    if size <= FULL_HASH_LIMIT:
        return file_sha256(path)
    digest = hashlib.sha256(f"{size}\n".encode())
    last = size - SAMPLE_BLOCK_SIZE
    with open(path, "rb") as handle:
        for i in range(SAMPLE_BLOCKS):
            handle.seek(last * i // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BLOCK_SIZE))
    return "sampled:" + digest.hexdigest()


class DigestMemo:
    """The content digests of the files under one input root (a folder, or a single file), remembered in
    ``<memo_dir>/<hash of the root's path>.parquet`` by (relative path, size, mtime_ns, ctime_ns, inode).

    A file whose signature is unchanged is not read again; a copy (new inode, new ctime) is hashed again
    by content, so it keeps its digests. Writes are atomic; two processes writing at once lose at worst
    entries of the other, which costs a re-read later, never a wrong digest. No ``memo_dir``: nothing is
    remembered, every file is read.
    """

    def __init__(self, memo_dir: str | Path | None, root: Path) -> None:
        self.root = root
        name = hashlib.sha256(f"{SCHEME}\0{root}".encode()).hexdigest()[:24]
        self.file = Path(memo_dir) / f"{name}.parquet" if memo_dir is not None else None
        self.known = self._read()
        self.seen: dict[str, tuple[int, int, int, int, str]] = {}
        self.hashed = 0

    def digest(self, rel: str, path: str | Path, stat: os.stat_result) -> str:
        """The content digest of ``path`` (``rel`` under the root), from the memo when its signature matches."""
        signature = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        entry = self.known.get(rel)
        if entry is not None and entry[:4] == signature:
            digest = entry[4]
        else:
            try:
                digest = content_digest(path, stat.st_size)
            except OSError as exc:
                raise DataError(path, f"cannot read input ({exc.strerror or exc})") from exc
            self.hashed += 1
        self.seen[rel] = (*signature, digest)
        return digest

    def save(self, complete: bool) -> None:
        """Write the memo when something was hashed; ``complete``: the root was listed whole, so entries
        not seen are gone and are dropped (else they are kept beside the ones seen)."""
        if self.file is None or (not self.hashed and (not complete or len(self.seen) == len(self.known))):
            return
        entries = self.seen if complete else {**self.known, **self.seen}
        rels = sorted(entries)
        columns = {"path": rels, **{name: [entries[r][i] for r in rels] for i, name in enumerate(_SIGNATURE)},
                   "digest": [entries[r][4] for r in rels]}
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.file) as tmp:
            pq.write_table(pa.table(columns), tmp)

    def _read(self) -> dict[str, tuple[int, int, int, int, str]]:
        if self.file is None or not self.file.is_file():
            return {}
        try:
            columns = pq.read_table(self.file).to_pydict()
            return {rel: tuple(v) for rel, *v in zip(columns["path"], *(columns[n] for n in _SIGNATURE),
                                                       columns["digest"], strict=True)}
        except (OSError, KeyError, ValueError, pa.ArrowException):  # an unreadable memo only costs a re-read
            return {}


def path_fingerprint(path: str | Path, memo_dir: str | Path | None = None) -> dict[str, object]:
    """What an input file or folder holds, by content, without its location.

    File: ``{"digest": content_digest}``. Folder: the number of files and the sha256 over the sorted
    (relative path, content digest) of every regular file under it (hidden ones included; linked folders
    followed once). ``memo_dir``: where per-file digests are remembered between calls (``DigestMemo``).
    """
    path = Path(path).resolve()
    if path.is_file():
        memo = DigestMemo(memo_dir, path)
        digest = memo.digest("", path, path.stat())
        memo.save(complete=True)
        return {"digest": digest}
    if path.is_dir():
        memo = DigestMemo(memo_dir, path)
        listing = hashlib.sha256()
        count = 0
        for rel, file, stat in sorted(_walk_files(path)):
            listing.update(f"{rel}\0{memo.digest(rel, file, stat)}\n".encode())
            count += 1
        memo.save(complete=True)
        return {"files": count, "digest": listing.hexdigest()}
    raise DataError(path, "input not found")


def files_digest(root: str | Path, rels: Iterable[str], memo_dir: str | Path | None = None) -> str:
    """sha256 over the sorted (relative path, content digest) of the named files under the folder ``root``:
    the content of exactly the files a manifest lists. DataError naming the first one missing."""
    root = Path(root).resolve()
    memo = DigestMemo(memo_dir, root)
    digest = hashlib.sha256()
    for rel in sorted(set(rels)):
        file = os.path.join(root, rel)
        try:
            stat = os.stat(file)
        except OSError as exc:
            raise DataError(file, f"listed in the manifest but not readable ({exc.strerror or exc})") from exc
        digest.update(f"{rel}\0{memo.digest(rel, file, stat)}\n".encode())
    memo.save(complete=False)
    return digest.hexdigest()


def _walk_files(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative POSIX path, path, stat) of every regular file under ``root``, following linked folders
    (each real folder once, so a link loop ends); readers such as the image-folder scan follow them too.
    Paths stay strings: building a Path per file took half the time of a rerun over a large folder."""
    seen_dirs: set[tuple[int, int]] = set()
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen_dirs:
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir():
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file():
                    yield rel, entry.path, entry.stat()
