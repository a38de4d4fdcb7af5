"""The prepare-data stage's result as later stages read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from semiface.manifest import read_manifest
from tasks.prepare_data import _prepare_demo, with_current_inputs
from tasks.stage_cache import StageSpec, StageStore

TINY_DEMO = {"n_labelled_ids": 2, "n_unlabelled_ids": 2, "n_probe_ids": 1, "n_distractor_ids": 1, "images_per_id": 2}


def test_demo_images_are_found_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    spec = StageSpec("prepare_data", {"source": "demo", "options": TINY_DEMO})
    monkeypatch.chdir(first)
    made = StageStore("runs/stages").run(spec, lambda folder: _prepare_demo(folder, TINY_DEMO))
    assert not Path(made.summary["image_root"]).is_absolute()  # recorded relative to the first directory

    monkeypatch.chdir(second)
    cached = StageStore(first / "runs" / "stages").run(spec, lambda folder: pytest.fail("recomputed"))
    assert cached.cached and not Path(cached.summary["image_root"]).is_dir()  # the recorded root is lost here
    root = Path(with_current_inputs(cached, "demo", None, TINY_DEMO).summary["image_root"])
    paths = read_manifest(cached.path("manifest"))["path"]
    assert len(paths) > 0 and all((root / path).is_file() for path in paths)
