"""Stage cache keys: what changes them and what does not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import semiface.digests as digests
import tasks.stage_cache as stage_cache
from semiface.atomic import save_json, save_npy, save_npz
from semiface.digests import content_digest, files_digest, path_fingerprint
from semiface.errors import DataError
from semiface.manifest import write_manifest
from semiface.training.checkpoints import save_model_file
from tasks.stage_cache import StageResult, StageSpec, StageStore, stage_key
from tasks.stage_code import REPO_ROOT, code_fingerprint, code_text, stage_modules
from tasks.train_backbone import CODE as TRAIN_CODE

PACKAGES = ("backbone", "clustering", "recognition_eval", "semiface", "tasks", "flows")


def test_comments_docstrings_layout_and_prefect_decorators_keep_the_code_text() -> None:
    plain = "def f(x):\n    return x + 1\n"
    annotated = '"""Module."""\n\n\ndef f(x):  # add one\n    """Add one."""\n    return (x +\n            1)\n'
    assert code_text(plain) == code_text(annotated)
    assert code_text(plain) != code_text("def f(x):\n    return x + 2\n")
    decorated = '@task(name="f", retries={})\ndef f(x):\n    return x + 1\n'
    assert code_text(decorated.format(1)) == code_text(decorated.format(3)) == code_text(plain)
    assert code_text("@cache\n" + plain) != code_text(plain)  # other decorators change what runs


def test_the_closure_follows_imports_anywhere_and_names_of_modules(tmp_path: Path) -> None:
    files = {
        "lib/__init__.py": "",
        "lib/a.py": "def f():\n    from lib.sub import b\n    return b\n",  # an import inside a function
        "lib/sub/__init__.py": "",
        "lib/sub/b.py": "from . import c\nimport numpy\n",  # relative; numpy is not the repository's
        "lib/sub/c.py": "REGISTRY = ('lib.d',)\n",  # reached by name (a registry)
        "lib/d.py": "from lib import report\n",
        "lib/report.py": "",
        "lib/unused.py": "",
        "tasks/__init__.py": "",
        "tasks/stage.py": "from lib.a import f\nfrom lib.report import table\nfrom tasks.common import execute\n",
        "tasks/common.py": "from lib.unused import x\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert stage_modules(("lib.a",), tmp_path) == ("lib", "lib.a", "lib.d", "lib.report", "lib.sub", "lib.sub.b",
                                                   "lib.sub.c")
    # A task module's plumbing (tasks.common) is not followed; what it computes with is.
    assert "tasks.common" not in stage_modules(("tasks.stage",), tmp_path)
    assert "lib.unused" not in stage_modules(("tasks.stage",), tmp_path)
    assert "lib.report" in stage_modules(("tasks.stage",), tmp_path)
    with pytest.raises(ValueError, match="lib.nothing"):
        stage_modules(("lib.nothing",), tmp_path)


def test_the_stages_hash_what_they_import_and_what_they_reach_by_name() -> None:
    training = stage_modules(TRAIN_CODE)
    assert {"backbone.train", "backbone.steps", "backbone.loader", "backbone.data.dataset", "tasks.torchrun",
            "semiface.training.checkpoints", "clustering.clusterer_holdout"} <= set(training)
    assert not {"semiface.markdown", "tasks.common", "tasks.plots", "tasks.prepare_data"} & set(training)
    assert not any(m.startswith(("flows", "clustering.facet", "recognition_eval")) for m in training)
    # The clustering methods are found by name in the registry's module list.
    assert {"clustering.facet.method", "clustering.clusformer.method", "clustering.baselines"} <= set(
        stage_modules(("tasks.train_clusterer",)))
    # The evaluation report writes markdown with semiface.markdown: there it counts.
    assert "semiface.markdown" in stage_modules(("tasks.evaluate",))


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The repository's Python packages copied to a temporary folder (to edit them)."""
    root = tmp_path / "repo"
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    """Replace the first ``old`` in the module ``rel`` by ``new`` (``old`` empty: append ``new``)."""
    path = root / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new, 1) if old else text + new)
    code_fingerprint.cache_clear()  # computed once per process: the edit is a new process's view
    stage_modules.cache_clear()


def test_an_edit_outside_the_training_code_keeps_train_backbone_cached(repo_copy: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage_cache, "code_fingerprint", lambda entries: code_fingerprint(entries, repo_copy))
    store = StageStore(tmp_path / "stages")
    runs: list[int] = []

    def train(folder: Path) -> tuple[dict[str, Path], dict]:
        runs.append(1)
        return {"model": save_npy(folder / "model.npy", np.arange(3.0))}, {}

    spec = StageSpec("train_backbone", {"epochs": 1}, code=TRAIN_CODE)
    store.run(spec, train)
    _edit(repo_copy, "semiface/markdown.py", "", "\n\ndef bold(text):\n    return f'**{text}**'\n")
    _edit(repo_copy, "tasks/plots.py", "figsize=(5, 3.2)", "figsize=(6, 4)")
    _edit(repo_copy, "clustering/facet/model.py", "", "\nEDITED = True\n")
    _edit(repo_copy, "tasks/train_backbone.py", "@task(", "@task(timeout_seconds=5, ")  # how Prefect runs it
    _edit(repo_copy, "backbone/train.py", '"""', '"""Docstring edited. ')
    assert store.run(spec, train).cached and len(runs) == 1

    _edit(repo_copy, "backbone/steps.py", "", "\nSTEP_CONSTANT = 1\n")  # the training code changed
    assert not store.run(spec, train).cached and len(runs) == 2
    _edit(repo_copy, "tasks/torchrun.py", "POLL_SECONDS = 2.0", "POLL_SECONDS = 1.0")
    assert not store.run(spec, train).cached and len(runs) == 3


def test_a_byte_identical_recomputation_upstream_keeps_the_downstream_key(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "stages")
    content = {"value": "same bytes"}
    runs: list[int] = []

    def upstream(folder: Path) -> tuple[dict[str, Path], dict]:
        runs.append(1)
        path = folder / "out.txt"
        path.write_text(content["value"])
        return {"out": path}, {"seconds": 1.5 * len(runs), "rows": 3}

    first = store.run(StageSpec("prepare", {"code": "v1"}), upstream)
    again = store.run(StageSpec("prepare", {"code": "v2"}), upstream)  # keyed anew (e.g. its code changed)
    assert not again.cached and again.key != first.key and again.digests == first.digests
    below = lambda up, reads=(): StageSpec("train", {}, (up,), reads=reads)  # noqa: E731
    assert stage_key(below(first)) == stage_key(below(again))
    assert stage_key(below(first, ("rows",))) == stage_key(below(again, ("rows",)))
    # A summary field the stage reads counts; one it does not read (a timing) does not.
    assert stage_key(below(first, ("rows",))) != stage_key(below(first))
    timing = StageResult(first.stage, first.key, first.dir, first.outputs, {**first.summary, "seconds": 9.0},
                         digests=first.digests)
    assert stage_key(below(timing, ("rows",))) == stage_key(below(first, ("rows",)))

    content["value"] = "other bytes"
    changed = store.run(StageSpec("prepare", {"code": "v3"}), upstream)
    assert stage_key(below(changed)) != stage_key(below(first))
    with pytest.raises(ValueError, match="no content digest"):
        stage_key(below(StageResult("prepare", "k", "d", {"out": "x"}, {})))


def test_parameters_upstream_and_refresh(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "stages")
    calls: list[int] = []

    def compute(folder):
        calls.append(1)
        (folder / "out.txt").write_text(str(len(calls)))
        return {"out": folder / "out.txt"}, {"n": len(calls)}

    first = store.run(StageSpec("toy", {"a": 1}), compute)
    assert store.run(StageSpec("toy", {"a": 1}), compute).cached and len(calls) == 1
    assert not store.run(StageSpec("toy", {"a": 2}), compute).cached  # another parameter
    downstream = StageSpec("next", {}, upstream=(first,))
    changed = StageSpec("next", {}, upstream=(store.run(StageSpec("toy", {"a": 2}), compute),))
    assert stage_key(downstream) != stage_key(changed)  # another upstream output
    one, two = first, store.run(StageSpec("toy", {"a": 2}), compute)
    both = stage_key(StageSpec("next", {}, upstream=(one, two)))  # two results of one stage: both count
    assert both != stage_key(StageSpec("next", {}, upstream=(two, two)))
    assert both != stage_key(StageSpec("next", {}, upstream=(one, one)))
    again = store.run(StageSpec("toy", {"a": 1}), compute, refresh=True)
    assert not again.cached and again.summary["n"] == len(calls) == 3
    record = json.loads((Path(again.dir) / "done.json").read_text())
    assert record["upstream"] == {} and record["code"]["modules"] == []
    assert record["outputs"]["out"]["sha256"] == again.digests["out"]


def _data_folder(root: Path) -> Path:
    for person in ("alice", "bob"):
        for i in range(3):
            (root / person).mkdir(parents=True, exist_ok=True)
            (root / person / f"{i}.jpg").write_bytes(f"{person} pixels {i}".encode() * 50)
    (root / "README.txt").write_text("not an image")
    return root


def test_a_data_folder_copied_without_timestamps_keeps_its_keys(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "stages")
    data = _data_folder(tmp_path / "data")
    spec = lambda folder: StageSpec("prepare_data", {"seed": 0}, external={"data": str(folder)})  # noqa: E731
    listed = [f"{p}/{i}.jpg" for p in ("alice", "bob") for i in range(3)]
    key, images = store.key(spec(data)), store.files_digest(data, listed)

    copy = Path(shutil.copytree(data, tmp_path / "copy", copy_function=shutil.copyfile))  # new mtimes
    for i, path in enumerate(sorted(copy.rglob("*"))):
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    assert store.key(spec(copy)) == key and store.files_digest(copy, listed) == images

    # A file not in the manifest changes the folder (prepare_data runs again), not the images it lists.
    (copy / "README.txt").write_text("edited")
    assert store.key(spec(copy)) != key and store.files_digest(copy, listed) == images

    # Same size, mtime put back: the content still counts (never mtime alone).
    target = copy / "bob" / "1.jpg"
    stat = target.stat()
    target.write_bytes(target.read_bytes().replace(b"pixels", b"PIXELS"))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    assert store.files_digest(copy, listed) != images
    with pytest.raises(DataError, match="not readable"):
        store.files_digest(copy, [*listed, "carol/0.jpg"])


def test_a_moved_data_root_keeps_the_key_and_changed_content_does_not(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "1.jpg").write_bytes(b"pixels")
    single = root / "features.npy"
    np.save(single, np.arange(10.0))
    spec = lambda folder, file: StageSpec("prepare_data", {"seed": 0}, external={"data": str(folder), "f": str(file)})  # noqa: E731
    key = stage_key(spec(root, single))
    moved = shutil.move(str(root), str(tmp_path / "elsewhere"))
    assert stage_key(spec(moved, f"{moved}/features.npy")) == key
    np.save(f"{moved}/features.npy", np.arange(11.0))
    assert stage_key(spec(moved, f"{moved}/features.npy")) != key
    assert "path" not in str(path_fingerprint(moved)) and "path" not in str(path_fingerprint(f"{moved}/features.npy"))
    with pytest.raises(DataError, match="input not found"):
        stage_key(spec(tmp_path / "nowhere", single))


def test_a_rerun_reads_only_the_files_that_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data_folder(tmp_path / "data")
    memo = tmp_path / "stages" / ".digests"
    read: list[str] = []
    real = digests.content_digest
    monkeypatch.setattr(digests, "content_digest", lambda path, size=None: read.append(Path(path).name) or real(path, size))
    first = path_fingerprint(data, memo)
    assert first["files"] == 7 and len(read) == 7
    read.clear()
    assert path_fingerprint(data, memo) == first and read == []  # remembered
    (data / "alice" / "0.jpg").write_bytes(b"new")
    assert path_fingerprint(data, memo) != first and read == ["0.jpg"]
    read.clear()
    (data / "alice" / "0.jpg").unlink()
    assert path_fingerprint(data, memo)["files"] == 6 and read == []
    next(memo.iterdir()).write_bytes(b"torn")  # an unreadable memo: everything is read again
    assert path_fingerprint(data, memo)["files"] == 6 and len(read) == 6


def test_very_large_files_are_hashed_by_evenly_spaced_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests, "FULL_HASH_LIMIT", 4096)
    monkeypatch.setattr(digests, "SAMPLE_BLOCK_SIZE", 64)
    monkeypatch.setattr(digests, "SAMPLE_BLOCKS", 4)  # blocks at 0, 1/3, 2/3 and the end of the file
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x" * 4096)
    assert content_digest(small) == digests.file_sha256(small)
    data = bytearray(np.random.default_rng(0).integers(0, 256, 9000, dtype=np.uint8).tobytes())
    big.write_bytes(data)
    sampled = content_digest(big)
    assert sampled.startswith("sampled:")
    for offset, seen in ((0, True), (8999, True), (2978, True), (1500, False)):  # 2978 = 8936 // 3
        edited = bytearray(data)
        edited[offset] ^= 0xFF
        big.write_bytes(edited)
        assert (content_digest(big) != sampled) is seen, offset
    big.write_bytes(data + b"\0")
    assert content_digest(big) != sampled  # a size change is always seen


def test_stage_outputs_written_twice_are_the_same_bytes(tmp_path: Path) -> None:
    """Recomputed outputs keep the keys below them only if they are byte-identical: no timestamp or
    temporary file name may end up inside a file."""
    frame = pd.DataFrame({"path": ["a/1.jpg", "b/2.jpg"], "label": np.array([0, -1]), "identity": ["a", "b"],
                          "split": ["labelled", "unlabelled"]})
    writers = {
        "manifest.parquet": lambda p: write_manifest(frame, p),
        "features.npy": lambda p: save_npy(p, np.arange(6, dtype=np.float32).reshape(2, 3)),
        "knn.npz": lambda p: save_npz(p, nbrs=np.arange(4).reshape(2, 2), sims=np.ones((2, 2), np.float16)),
        "summary.json": lambda p: save_json(p, {"rows": 2, "metrics": {"f": 0.5}}),
        "model.pt": lambda p: save_model_file(p, "toy", {"state": {"w": torch.arange(4.0)}, "epochs": 1}),
    }
    for name, write in writers.items():
        write(tmp_path / "one" / name)
        os.utime(tmp_path / "one" / name, ns=(0, 0))
        write(tmp_path / "two" / name)
        assert files_digest(tmp_path / "one", [name]) == files_digest(tmp_path / "two", [name]), name
