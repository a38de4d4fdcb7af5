"""prefect.yaml works as documented: local server, process pool, deploy, worker, ``deployment run`` -> COMPLETED.

Everything runs against a Prefect server started here on a free loopback port, with a temporary
PREFECT_HOME and SQLite database; every process started is stopped, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL = "semiface"
# The demo deployment with tiny data and the shortest route (lower bound: train, extract, evaluate).
OVERRIDES = {
    "data_options": {"n_labelled_ids": 4, "n_unlabelled_ids": 4, "n_probe_ids": 3, "n_distractor_ids": 12,
                     "images_per_id": 3},
    "labels": "labelled_only", "image_size": 32, "epochs": 1, "train_options": {"batch_size": 6},
    "distractor_sizes": [12], "extract_batch_size": 32,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children (the worker's flow runs)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def prefect_env(tmp_path) -> Iterator[dict[str, str]]:
    port = free_port()
    home = tmp_path / "prefect-home"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_PROFILE", None)
    home.mkdir()
    logs = tmp_path / "server.log"
    with open(logs, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(env["PREFECT_API_URL"], server, timeout=180)
        yield env
    finally:
        stop(server)


def test_demo_deployment_runs_to_completed_on_a_process_worker(prefect_env, tmp_path):
    env = prefect_env
    created = prefect("work-pool", "create", POOL, "--type", "process", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect("--no-prompt", "deploy", "--all", env=env, timeout=180)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert all(f"semi-supervised/{name}" in deployed.stdout for name in ("demo", "ms1m", "ms1m-clusformer"))

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "1"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run_dir = tmp_path / "run"
        params = {**OVERRIDES, "run_dir": str(run_dir)}
        ran = prefect("deployment", "run", "semi-supervised/demo", "--params", json.dumps(params), "--watch",
                      "--watch-interval", "2", "--watch-timeout", "400", env=env, timeout=420)
        output = ran.stdout + ran.stderr
        assert ran.returncode == 0, output + worker_log.read_text()
        assert "COMPLETED" in output.upper(), output
        summary = json.loads((run_dir / "run.json").read_text())
        assert summary["labels"] == "labelled_only" and summary["n_labelled"] == 12
        assert 0.0 <= summary["rank1_before_largest"] <= 1.0

        # A sweep over the deployment: every run is a deployment run the worker picks up; the runs get
        # what the sweep was given and the deployment's own parameters for the rest (its method).
        sweep_dir = tmp_path / "sweep"
        given = {k: v for k, v in OVERRIDES.items() if k != "labels"}
        script = ("import json, sys; from flows.compare_ratios import compare_ratios; "
                  "s = compare_ratios(deployment='semi-supervised/demo', ratios=[1.0], max_parallel=2, "
                  f"run_dir={str(sweep_dir)!r}, **json.loads(sys.argv[1])); print('ROWS', json.dumps(s['rows']))")
        swept = subprocess.run([sys.executable, "-c", script, json.dumps(given)], cwd=REPO_ROOT, env=env,
                               capture_output=True, text=True, timeout=900)
        assert swept.returncode == 0, swept.stdout + swept.stderr + worker_log.read_text()
    finally:
        stop(worker)
    rows = {row["run"]: row for row in json.loads(swept.stdout.split("ROWS ", 1)[1].splitlines()[0])}
    assert set(rows) == {"lower-bound", "ratio-1", "upper-bound"}
    assert {row["status"] for row in rows.values()} == {"completed"}, rows
    assert (sweep_dir / "compare" / "comparison.md").is_file()
    child = json.loads((sweep_dir / "ratio-1.json").read_text())
    assert child["method"] == "infomap"  # the deployment's method, not compare-ratios' default (facet)


def test_ms1m_deployments_run_each_method_at_its_paper_preset() -> None:
    import yaml

    from clustering.base import make_method

    deployments = {d["name"]: d["parameters"] for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
    facet, clusformer = deployments["ms1m"], deployments["ms1m-clusformer"]
    assert {k: v for k, v in clusformer.items() if k not in ("method", "method_params", "label")} == \
        {k: v for k, v in facet.items() if k not in ("method", "method_params", "label")}  # the same run otherwise
    facet_cfg = make_method(facet["method"], **facet["method_params"]).config
    assert (facet_cfg.hop1, facet_cfg.depth, facet_cfg.heads * facet_cfg.head_dim, facet_cfg.epochs) == (150, 2, 256, 60)
    assert facet["k"] >= facet_cfg.hop1 + 1  # the flow's graph is deep enough for FaceT's sequences
    cfg = make_method(clusformer["method"], **clusformer["method_params"]).config
    assert (cfg.k, cfg.d_model, cfg.nhead, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.epochs, cfg.lr) == \
        (64, 256, 8, 6, 6, 50, 1e-4)
    assert clusformer["label"] != facet.get("label", "run")  # both summaries live in one run folder
