"""Stage cache keys: what changes them and what does not."""

from __future__ import annotations

import shutil

import numpy as np

from tasks.stage_cache import StageSpec, StageStore, code_text, fingerprint_path, stage_key


def test_comments_docstrings_and_layout_keep_the_code_text() -> None:
    plain = "def f(x):\n    return x + 1\n"
    annotated = '"""Module."""\n\n\ndef f(x):  # add one\n    """Add one."""\n    return (x +\n            1)\n'
    assert code_text(plain) == code_text(annotated)
    assert code_text(plain) != code_text("def f(x):\n    return x + 2\n")


def test_a_moved_data_root_keeps_the_key_and_changed_content_does_not(tmp_path) -> None:
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
    assert "path" not in fingerprint_path(moved) and "path" not in fingerprint_path(f"{moved}/features.npy")


def test_parameters_upstream_and_refresh(tmp_path) -> None:
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
