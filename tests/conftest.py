"""Fixtures shared by the test modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real face folders (lfw, yale_b, orl) beside the checkout; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA}")
    return SHARED_DATA


# Run by ``run_ddp_workers`` in a fresh interpreter: load the test module, fork its worker twice.
_FORK_WORKERS = """
import json, runpy, sys
import torch.multiprocessing as mp
worker = runpy.run_path(sys.argv[1])[sys.argv[2]]
mp.start_processes(worker, args=tuple(json.loads(sys.argv[3])), nprocs=2, join=True, start_method="fork")
"""


@pytest.fixture
def run_ddp_workers():
    """``run(test_file, worker_name, *args)``: two DDP ranks of ``worker(rank, *args)``, forked from a
    fresh interpreter. Forked from pytest itself they inherit whatever earlier tests left running
    (Prefect's test server threads made a rank exit with code 1); spawned, each would re-import
    torch and timm (10-40 s on a loaded 2-core machine)."""

    def run(test_file: str, worker_name: str, *args: object) -> None:
        done = subprocess.run([sys.executable, "-c", _FORK_WORKERS, test_file, worker_name, json.dumps(args)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"DDP workers failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    return run
