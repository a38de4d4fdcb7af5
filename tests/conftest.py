"""Fixtures shared by the test modules."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class TrainingKilled(Exception):
    """Raised by ``killed_after_steps`` in place of an optimisation step (a killed process)."""


@pytest.fixture
def killed_after_steps(monkeypatch):
    """``with killed_after_steps(n): train_backbone(...)``: the run dies (TrainingKilled) instead of
    taking its step n+1, as a killed process would; the block asserts that it died."""
    import backbone.train as train_module

    real_step = train_module.train_step

    @contextmanager
    def killed(steps: int) -> Iterator[None]:
        calls = []

        def dies(*args, **kwargs):
            if len(calls) == steps:
                raise TrainingKilled
            calls.append(1)
            return real_step(*args, **kwargs)

        monkeypatch.setattr(train_module, "train_step", dies)
        try:
            with pytest.raises(TrainingKilled):
                yield
        finally:
            monkeypatch.setattr(train_module, "train_step", real_step)

    return killed


@pytest.fixture
def partitions_seen(monkeypatch) -> list[tuple[str, int, float]]:
    """(``link_weight``, Infomap trials, Markov time) of every ``partition_links`` call made by the tau search and by
    FaceT's and Clusformer's clustering (the real function still runs)."""
    import clustering.clusformer.method
    import clustering.evaluate
    import clustering.facet.method
    import clustering.partition

    real = clustering.partition.partition_links
    seen: list[tuple[str, int, float]] = []

    def spy(*args, **kwargs):
        seen.append((kwargs.get("link_weight", "probability"), kwargs.get("num_trials", 1), kwargs.get("markov_time", 1.0)))
        return real(*args, **kwargs)

    # evaluate and the two methods import the function: patch it where each looks it up
    for module in (clustering.evaluate, clustering.facet.method, clustering.clusformer.method, clustering.partition):
        monkeypatch.setattr(module, "partition_links", spy)
    return seen


@pytest.fixture
def face_folders(tmp_path) -> tuple[Path, Path, Path]:
    """Generated faces as folders under ``tmp_path / "data"``: faces/<identity>/<image> to train on (10
    people, 4 images each) and, in the MegaFace Challenge 1 layout, facescrub/<identity>/<image> probes (3
    people) and a nested distractor folder megaface/FlickrFinal2 (20 people, one image each)."""
    import shutil

    from backbone.data.demo_faces import DemoConfig, generate_demo_dataset
    from semiface.manifest import read_manifest

    root = tmp_path / "data"
    manifest = generate_demo_dataset(root / "generated", DemoConfig(
        n_labelled_ids=10, n_unlabelled_ids=0, n_probe_ids=3, n_distractor_ids=20, images_per_id=4, image_size=32,
        seed=5))
    faces, probes, distractors = root / "faces", root / "facescrub", root / "megaface" / "FlickrFinal2"
    for i, row in read_manifest(manifest).iterrows():
        source = manifest.parent / row["path"]
        if row["split"] == "labelled":
            target = faces / row["identity"] / source.name
        elif row["split"] == "probe":
            target = probes / f"celebrity-{row['identity']}" / source.name
        else:
            target = distractors / f"{i % 3}" / f"{row['identity']}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    shutil.rmtree(root / "generated")
    return faces, probes, distractors


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real face folders (lfw, yale_b, orl) beside the checkout; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA}")
    return SHARED_DATA


# Run by ``run_ddp_workers`` in a fresh interpreter: load the test module, fork its worker twice,
# each rank with the torch.distributed environment of a 2-process group on a free local port.
_FORK_WORKERS = """
import json, os, runpy, socket, sys
import torch
import torch.multiprocessing as mp
worker = runpy.run_path(sys.argv[1])[sys.argv[2]]
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

def rank_main(rank, *args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    worker(rank, *args)

mp.start_processes(rank_main, args=tuple(json.loads(sys.argv[3])), nprocs=2, join=True, start_method="fork")
"""


@pytest.fixture
def run_ddp_workers():
    """``run(test_file, worker_name, *args)``: ``worker(rank, *args)`` as the two ranks of a DDP group
    (environment set, one torch thread each), forked from a fresh interpreter. Forked from pytest
    itself they inherit whatever earlier tests left running (Prefect's test server threads made a
    rank exit with code 1); spawned, each would re-import torch and timm (10-40 s on 2 busy cores)."""

    def run(test_file: str, worker_name: str, *args: object) -> None:
        done = subprocess.run([sys.executable, "-c", _FORK_WORKERS, test_file, worker_name, json.dumps(args)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"DDP workers failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    return run


@pytest.fixture(scope="session")
def dlib_split():
    """The dlib descriptors of the real face folders split in two identity halves (seed 0); skips when absent."""
    from bench.dlib_features import DEFAULT_FEATURES, real_feature_split

    if not DEFAULT_FEATURES.is_dir():
        pytest.skip(f"real face features not found at {DEFAULT_FEATURES}")
    return real_feature_split(DEFAULT_FEATURES, seed=0)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for the test (tiny models run faster so on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for one test module."""
    with prefect_test_harness(server_startup_timeout=180):
        yield
