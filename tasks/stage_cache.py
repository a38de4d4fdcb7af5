"""File-based stage cache: a stage whose outputs for the same inputs, parameters and code exist is skipped.

How the key is formed (``key_document``, ``stage_key``): sha256 over a canonical JSON document of

* the stage name;
* its parameters (sorted keys; runtime-only settings such as device and worker count are left out,
  as they change how a stage runs, not what it computes);
* what it reads from upstream stages: the sha256 of each upstream output (recorded in the upstream's
  ``done.json``) and the upstream summary fields it names (``StageSpec.reads``), never the upstream
  keys: an upstream recomputed to byte-identical outputs (after an edit of code it alone runs) keeps
  every key below it;
* a content fingerprint of every external input (``semiface.digests.path_fingerprint``: files by
  sha256, sampled above 1 GiB; folders by relative paths and their files' digests, remembered per file
  in ``<cache root>/.digests/`` so that a rerun reads only what changed; never location or mtime);
* the code: ``tasks.stage_code.code_fingerprint`` of the stage's entry modules, i.e. the syntax trees
  (no comments, docstrings, layout or Prefect decorators) of the repository modules they import.

A stage writes into ``<cache root>/<stage>-<key[:16]>/`` and, last, ``done.json`` (atomic rename)
recording the key, what it covered, the summary and, for every output file, its size, mtime and
sha256. A later run with the same key finds ``done.json``, checks the outputs are still there
and unchanged (same size; same mtime, or else the same sha256), and returns the recorded result
without computing anything. A stage that crashed leaves no ``done.json``: it runs again, in the
same folder, so a library that resumes from its own checkpoints (training) picks up where it stopped.
A per-stage file lock makes two concurrent runs of the same stage compute it once.

Library versions (torch, faiss...) are not part of the key: an upgrade does not retrain
everything; pass the stage name in ``refresh`` (or delete its folder) to force a recomputation.
docs/caching.md says all of this for users.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiface.atomic import save_json
from semiface.digests import file_sha256, files_digest, path_fingerprint
from semiface.errors import DataError
from tasks.stage_code import code_fingerprint, stage_modules

DONE_FILE = "done.json"
# Under the cache root: the per-file content digests of external inputs (semiface.digests.DigestMemo).
DIGEST_FOLDER = ".digests"
# Summary field of the data stages: the content of the images their manifest's rows are read from (the
# listed files of an image folder or of the generated demo faces, the RecordIO files, an evaluation set's
# inputs). Stages that read images name it in StageSpec.reads: their keys follow the images' bytes, not
# where the images are mounted.
IMAGE_DIGEST = "image_digest"


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
    digests: dict[str, str] = field(default_factory=dict)  # output name -> sha256 of its bytes

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
    # Entry modules (dotted): the stage's task module, and any module it reaches only by a name built at
    # run time; the repository modules they import are hashed (tasks.stage_code).
    code: tuple[str, ...] = ()
    runtime: dict[str, Any] = field(default_factory=dict)  # recorded, not hashed (device, workers)
    reads: tuple[str, ...] = ()  # upstream summary fields the stage reads: hashed beside the upstream outputs


def key_document(spec: StageSpec, digest_dir: str | Path | None = None) -> dict[str, Any]:
    """What the key of ``spec`` covers (see the module docstring); ``digest_dir`` remembers per-file digests."""
    return {
        "stage": spec.stage,
        "params": spec.params,
        "upstream": upstream_content(spec.upstream, spec.reads),
        "external": {name: path_fingerprint(path, digest_dir) for name, path in sorted(spec.external.items())},
        "code": code_fingerprint(tuple(spec.code)),
    }


def stage_key(spec: StageSpec, digest_dir: str | Path | None = None) -> str:
    """The cache key of ``spec``: sha256 of its canonical ``key_document``."""
    return content_digest_of(key_document(spec, digest_dir))


def content_digest_of(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys): the same content, the same digest."""
    return hashlib.sha256(_canonical(value).encode()).hexdigest()


def upstream_content(upstream: Iterable[StageResult], reads: Iterable[str] = ()) -> dict[str, Any]:
    """Stage name -> the digests of its outputs and the summary fields in ``reads`` it has; a second
    result of the same stage (two kNN graphs, say) is named ``<stage>#2``, so that every one counts.

    ValueError for a result without the digest of an output (one not made by ``StageStore``)."""
    fields = sorted(set(reads))
    content: dict[str, Any] = {}
    for result in upstream:
        if set(result.digests) != set(result.outputs):
            raise ValueError(f"upstream stage {result.stage!r} carries no content digest for output(s) "
                             f"{sorted(set(result.outputs) - set(result.digests))}")
        name, count = result.stage, 1
        while name in content:
            count += 1
            name = f"{result.stage}#{count}"
        content[name] = {"outputs": dict(result.digests),
                         "summary": {f: result.summary[f] for f in fields if f in result.summary}}
    return content


class StageStore:
    """The cache root: one folder per (stage, key), and the remembered digests of external inputs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.digest_dir = self.root / DIGEST_FOLDER

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key[:16]}"

    def key(self, spec: StageSpec) -> str:
        """``stage_key(spec)``, remembering the digests of external input files under this root."""
        return stage_key(spec, self.digest_dir)

    def fingerprint(self, path: str | Path) -> dict[str, Any]:
        """``path_fingerprint(path)`` with this root's remembered digests (cheap right after ``key``)."""
        return path_fingerprint(path, self.digest_dir)

    def files_digest(self, root: str | Path, rels: Iterable[str]) -> str:
        """``files_digest(root, rels)`` with this root's remembered digests: the content of the listed files."""
        return files_digest(root, rels, self.digest_dir)

    def lookup(self, spec: StageSpec, key: str | None = None) -> StageResult | None:
        """The recorded result of ``spec`` when its outputs are complete and unchanged, else None."""
        key = key or self.key(spec)
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
                           seconds=float(record.get("seconds", 0.0)),
                           digests={name: meta["sha256"] for name, meta in record["outputs"].items()})

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
        document = key_document(spec, self.digest_dir)
        key = content_digest_of(document)
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
                    # What the key covered, readable: diff two records to see why a stage was keyed anew.
                    "upstream": {name: {"key": result.key, **content} for (name, content), result
                                 in zip(document["upstream"].items(), spec.upstream, strict=True)},
                    "external": {name: {"path": str(spec.external[name]), **fingerprint}
                                 for name, fingerprint in document["external"].items()},
                    "code": {"entries": list(spec.code), "modules": list(stage_modules(tuple(sorted(set(spec.code))))),
                             "sha256": document["code"]},
                    "outputs": recorded,
                    "summary": summary,
                },
            )
        return StageResult(spec.stage, key, str(folder), {n: str(folder / m["file"]) for n, m in recorded.items()},
                           summary, cached=False, seconds=seconds,
                           digests={n: m["sha256"] for n, m in recorded.items()})


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
