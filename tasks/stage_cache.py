"""File-based stage cache: a stage whose outputs for the same inputs, parameters and code exist is skipped.

How the key is formed (``stage_key``): sha256 over a canonical JSON document of

* the stage name;
* its parameters (sorted keys; runtime-only settings such as device and worker count are left out,
  as they change how a stage runs, not what it computes);
* its inputs: the key of every upstream stage it reads (an upstream key already covers that
  stage's own inputs, parameters and code, so the chain is content-addressed end to end), and a
  fingerprint of every external input (see ``fingerprint_path``);
* the code: sha256 of the syntax trees (comments, docstrings and layout left out) of the library
  packages/modules the stage calls (e.g. ``backbone/`` for training) and of the task module itself.

A stage writes into ``<cache root>/<stage>-<key[:16]>/`` and, last, ``done.json`` (atomic rename)
recording the key, parameters, inputs, the summary and, for every output file, its size, mtime and
sha256. A later run with the same key finds ``done.json``, checks the outputs are still there
and unchanged (same size; same mtime, or else the same sha256), and returns the recorded result
without computing anything. A stage that crashed leaves no ``done.json``: it runs again, in the
same folder, so a library that resumes from its own checkpoints (training) picks up where it stopped.
A per-stage file lock makes two concurrent runs of the same stage compute it once.

Library versions (torch, faiss...) are not part of the key: an upgrade does not retrain
everything; pass the stage name in ``refresh`` (or delete its folder) to force a recomputation.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semiface.atomic import save_json
from semiface.digests import file_sha256
from semiface.errors import DataError

DONE_FILE = "done.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Files this size or smaller are content-hashed as external inputs; larger ones by size, mtime
# and the hash of their first and last MiB (hashing a 100 GB RecordIO file on every run is not an option).
FULL_HASH_LIMIT = 64 << 20
_EDGE = 1 << 20


@dataclass(frozen=True)
class StageResult:
    """What a stage hands downstream: its key, folder, output paths and a small JSON-able summary."""

    stage: str
    key: str
    dir: str
    outputs: dict[str, str]
    summary: dict[str, Any]
    cached: bool = False
    seconds: float = 0.0

    def path(self, name: str) -> Path:
        """The output file ``name`` (KeyError naming the known outputs)."""
        if name not in self.outputs:
            raise KeyError(f"stage {self.stage!r} has no output {name!r}; it has {sorted(self.outputs)}")
        return Path(self.outputs[name])


@dataclass(frozen=True)
class StageSpec:
    """Everything that identifies one execution of a stage."""

    stage: str
    params: dict[str, Any]
    upstream: tuple[StageResult, ...] = ()
    external: dict[str, str] = field(default_factory=dict)  # name -> path of an input outside the cache
    code: tuple[str, ...] = ()  # repo-relative files or folders whose .py sources the stage runs
    runtime: dict[str, Any] = field(default_factory=dict)  # recorded, not hashed (device, workers)


def stage_key(spec: StageSpec) -> str:
    """The cache key of ``spec`` (see the module docstring)."""
    document = {
        "stage": spec.stage,
        "params": spec.params,
        "upstream": upstream_keys(spec.upstream),
        "external": {name: fingerprint_path(path) for name, path in sorted(spec.external.items())},
        "code": code_fingerprint(spec.code),
    }
    return _sha256_text(_canonical(document))


def upstream_keys(upstream: Iterable[StageResult]) -> dict[str, str]:
    """Stage name -> key of each upstream result; a second result of the same stage (two kNN graphs,
    say) is named ``<stage>#2``, so that every one of them is in the key."""
    keys: dict[str, str] = {}
    for result in upstream:
        name, count = result.stage, 1
        while name in keys:
            count += 1
            name = f"{result.stage}#{count}"
        keys[name] = result.key
    return keys


def code_fingerprint(sources: Iterable[str]) -> str:
    """sha256 of the (relative path, code) of every .py file under the given repo paths, sorted.

    The code is the file's syntax tree without docstrings (``code_text``): a comment, a docstring or
    a reformatting does not make a new key (a trained backbone is not thrown away for a comment).
    """
    digest = hashlib.sha256()
    for rel in sorted(set(sources)):
        root = REPO_ROOT / rel
        if root.is_dir():
            files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        elif root.is_file():
            files = [root]
        else:
            raise FileNotFoundError(f"code fingerprint: {rel} does not exist under {REPO_ROOT}")
        for path in files:
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
            digest.update(b"\0")
            digest.update(code_text(path.read_text(encoding="utf-8")).encode())
    return digest.hexdigest()


# CPython 3.11 keeps one AST-construction recursion counter per interpreter, shared by its threads, so two
# threads parsing at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905); the stages of two sweep runs side by side (max_parallel > 1) fingerprint their
# code in threads. One parse at a time; a module read again unchanged (every stage of a run fingerprints
# the same packages) is not parsed again.
_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def code_text(source: str) -> str:
    """What a module computes, as text: its syntax tree (no comments, no layout) without docstrings."""
    with _PARSE_LOCK:
        tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def fingerprint_path(path: str | Path) -> dict[str, Any]:
    """A cheap but change-sensitive fingerprint of an external input file or folder.

    File <= 64 MiB: sha256 of its bytes. Larger file: size, mtime and sha256 of the first and
    last MiB. Folder: sha256 over the sorted (relative path, size, mtime) of every file in it.
    Where the input lives is not part of it: the same data moved to another root (``mv`` keeps
    mtimes) or mounted elsewhere by another worker keeps its fingerprint.
    """
    path = Path(path).resolve()
    if path.is_file():
        stat = path.stat()
        if stat.st_size <= FULL_HASH_LIMIT:
            return {"sha256": file_sha256(path)}
        with open(path, "rb") as handle:
            head = handle.read(_EDGE)
            handle.seek(-_EDGE, os.SEEK_END)
            tail = handle.read(_EDGE)
        return {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "edges_sha256": hashlib.sha256(head + tail).hexdigest(),
        }
    if path.is_dir():
        digest = hashlib.sha256()
        count = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                stat = full.stat()
                digest.update(f"{full.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
                count += 1
        return {"files": count, "listing_sha256": digest.hexdigest()}
    raise DataError(path, "input not found")


class StageStore:
    """The cache root: one folder per (stage, key)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key[:16]}"

    def lookup(self, spec: StageSpec, key: str | None = None) -> StageResult | None:
        """The recorded result of ``spec`` when its outputs are complete and unchanged, else None."""
        key = key or stage_key(spec)
        folder = self.stage_dir(spec.stage, key)
        record = _read_done(folder / DONE_FILE)
        if record is None or record.get("key") != key:
            return None
        outputs = {}
        for name, meta in record["outputs"].items():
            path = folder / meta["file"]
            if not _unchanged(path, meta):
                return None
            outputs[name] = str(path)
        return StageResult(spec.stage, key, str(folder), outputs, record["summary"], cached=True,
                           seconds=float(record.get("seconds", 0.0)))

    def run(
        self,
        spec: StageSpec,
        compute: Callable[[Path], tuple[Mapping[str, Path], dict[str, Any]]],
        refresh: bool = False,
    ) -> StageResult:
        """Return the cached result of ``spec`` or compute it.

        ``compute(stage_dir)`` writes its files inside ``stage_dir`` and returns (outputs by name,
        summary). ``refresh`` recomputes even when a valid result exists.
        """
        key = stage_key(spec)
        folder = self.stage_dir(spec.stage, key)
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder.with_name(folder.name + ".lock")):
            if not refresh:
                found = self.lookup(spec, key)
                if found is not None:
                    return found
            (folder / DONE_FILE).unlink(missing_ok=True)
            start = time.perf_counter()
            outputs, summary = compute(folder)
            seconds = time.perf_counter() - start
            recorded = {}
            for name, path in outputs.items():
                path = Path(path).resolve()
                if not path.is_file():
                    raise DataError(path, f"stage {spec.stage!r} reported output {name!r} but did not write it")
                if folder.resolve() not in path.parents:
                    raise DataError(path, f"stage {spec.stage!r} wrote output {name!r} outside its folder {folder}")
                stat = path.stat()
                recorded[name] = {
                    "file": path.relative_to(folder.resolve()).as_posix(),
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "sha256": file_sha256(path),
                }
            save_json(
                folder / DONE_FILE,
                {
                    "stage": spec.stage,
                    "key": key,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "seconds": round(seconds, 3),
                    "params": spec.params,
                    "runtime": spec.runtime,
                    "upstream": upstream_keys(spec.upstream),
                    "external": dict(spec.external),
                    "code": list(spec.code),
                    "outputs": recorded,
                    "summary": summary,
                },
            )
        return StageResult(spec.stage, key, str(folder), {n: str(folder / m["file"]) for n, m in recorded.items()},
                           summary, cached=False, seconds=seconds)


def result_from_dict(values: Mapping[str, Any]) -> StageResult:
    """Rebuild a StageResult passed through JSON (e.g. a deployment's parameters)."""
    return StageResult(**values)


def result_to_dict(result: StageResult) -> dict[str, Any]:
    return asdict(result)


def _unchanged(path: Path, meta: Mapping[str, Any]) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != meta["size"]:
        return False
    return stat.st_mtime_ns == meta["mtime_ns"] or file_sha256(path) == meta["sha256"]


def _read_done(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn marker cannot happen with atomic writes, but a hand-edited one can
    if not isinstance(record, dict) or "outputs" not in record or "summary" not in record:
        return None
    return record


class _locked:
    """Exclusive advisory lock on a file (held while a stage computes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = None

    def __enter__(self) -> _locked:
        self.handle = open(self.path, "a+")  # noqa: SIM115 (closed in __exit__)
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.handle is not None
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cache key: cannot canonicalise {type(value).__name__}")


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
