"""prefect.yaml works as documented: local server, process pool, deploy, worker, ``deployment run`` -> COMPLETED.

Everything runs against a Prefect server started here on a free loopback port, with a temporary
PREFECT_HOME and SQLite database; every process started is stopped, whatever happens.
"""

from __future__ import annotations

import dataclasses
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

from tasks.common import FAULT_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL = "semiface"
GPU_POOL = "semiface-gpu"
# The demo deployment with tiny data and the shortest route (lower bound: train, extract, evaluate; the
# deployment holds 30 % of the labelled identities out for the clusterer, so the lower bound is retrained too):
# 8 labelled and 8 unlabelled identities of 3 images each.
OVERRIDES = {
    "data_options": {"n_labelled_ids": 8, "n_unlabelled_ids": 8, "n_probe_ids": 3, "n_distractor_ids": 12,
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


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[tuple[dict[str, str], Path]]:
    """A Prefect server, the process pool, ``prefect deploy --all`` and a worker: (env, worker log)."""
    tmp_path = tmp_path_factory.mktemp("prefect")
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
    # The worker's runs fail the first clustering of each run folder: a sweep's first ratio run fails, the
    # others complete.
    worker_env = {**env, FAULT_ENV: "cluster:1"}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        wait_healthy(env["PREFECT_API_URL"], server, timeout=180)
        for pool in (POOL, GPU_POOL):  # prefect.yaml's ms1m deployments go to the GPU pool
            created = prefect("work-pool", "create", pool, "--type", "process", env=env)
            assert created.returncode == 0, created.stdout + created.stderr
        deployed = prefect("--no-prompt", "deploy", "--all", env=env, timeout=180)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert all(f"semi-supervised/{name}" in deployed.stdout for name in ("demo", "ms1m", "ms1m-clusformer"))
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "1"],
                cwd=tmp_path, env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        yield env, worker_log
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def run_deployment(env: dict[str, str], worker_log: Path, params: dict) -> str:
    """``prefect deployment run semi-supervised/demo --watch`` with ``params``; its output (asserted COMPLETED)."""
    ran = prefect("deployment", "run", "semi-supervised/demo", "--params", json.dumps(params), "--watch",
                  "--watch-interval", "2", "--watch-timeout", "400", env=env, timeout=420)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output + worker_log.read_text()
    assert "COMPLETED" in output.upper(), output
    return output


def run_script(env: dict[str, str], worker_log: Path, script: str, *args: str, timeout: float = 900) -> str:
    """``python -c script args`` against the test server (its output, asserted exit 0)."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr[-5000:] + worker_log.read_text()[-5000:]
    return done.stdout


# Resolves the demo deployment's run folder as deployed (prefect deploy from the repository: a pull step to
# it), then shrinks the deployment in place: argv[1] (JSON) over its stored parameters.
SHRINK_DEMO = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from flows.deployments import read_deployment
print("RESOLVED", read_deployment("semi-supervised/demo").run_dir("runs/semi-supervised"))
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name("semi-supervised/demo")
    client.update_deployment(deployment.id, DeploymentUpdate(parameters={**deployment.parameters,
                                                                         **json.loads(sys.argv[1])}))
"""
# A sweep over the demo deployment refused before any run (a hold-out too large for its 8 labelled identities),
# then one that sets the method alone and min_confidence to semi-supervised's default (the deployment's is 0.4).
SWEEP_DEMO = """
import json
from flows.compare_ratios import compare_ratios
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from semiface.errors import ConfigError

def flow_runs():
    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["semi-supervised"]))))

before = flow_runs()
try:
    compare_ratios(deployment="semi-supervised/demo", clusterer_holdout=0.9)
except ConfigError as exc:
    print("REFUSED", json.dumps({"error": str(exc), "new_runs": flow_runs() - before}))
summary = compare_ratios(deployment="semi-supervised/demo", method="knn_uf", min_confidence=0.0, ratios=[0.5, 1.0],
                         include_bounds=False)
print("ROWS", json.dumps(summary["rows"]))
"""


def test_a_sweep_over_the_demo_deployment_reuses_its_run_folder_and_sends_what_was_set(deployed, tmp_path):
    """The demo deployment, shrunk (tiny data, its run folder here), runs to COMPLETED on the worker. A sweep
    over it that sets only the method (Clusformer's parameters of the deployment would be refused by knn_uf)
    runs in the deployment's own run folder: nothing the deployment's run computed is computed again. The
    runs get what the sweep was given (a value equal to semi-supervised's default included) and the
    deployment's parameters for the rest. A run failing on the worker (injected fault) is a row of the table;
    a sweep whose parameters a run would refuse fails before any run starts."""
    from semiface.code_version import code_version, version_tag

    env, worker_log = deployed
    run_dir = tmp_path / "deployment-run"
    shrunk = {**{k: v for k, v in OVERRIDES.items() if k != "labels"}, "run_dir": str(run_dir)}
    resolved = run_script(env, worker_log, SHRINK_DEMO, json.dumps(shrunk)).split("RESOLVED ", 1)[1].split()[0]
    assert Path(resolved) == REPO_ROOT / "runs" / "demo-deployment"  # its relative run_dir, as its worker sees it

    run_deployment(env, worker_log, {"labels": "labelled_only"})
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["labels"] == "labelled_only" and summary["n_labelled"] == 8 * 3
    assert 0.0 <= summary["rank1_before_largest"] <= 1.0
    assert summary["code_version"] == code_version()  # the worker ran this checkout
    assert version_tag(code_version()) in flow_run(env, "semi-supervised[run]")["tags"]
    computed = {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*/done.json")}

    out = run_script(env, worker_log, SWEEP_DEMO)
    refused = json.loads(out.split("REFUSED ", 1)[1].splitlines()[0])
    assert "clusterer_holdout=0.9: 7 of 8 labelled identities" in refused["error"] and refused["new_runs"] == 0
    rows = {row["run"]: row for row in json.loads(out.split("ROWS ", 1)[1].splitlines()[0])}
    assert set(rows) == {"ratio-0.5", "ratio-1"}
    assert rows["ratio-0.5"]["status"].startswith("failed: ") and rows["ratio-0.5"]["rank1"] is None, rows
    assert rows["ratio-1"]["status"] == "completed" and 0.0 <= rows["ratio-1"]["rank1"] <= 1.0, rows
    assert "failed: " in (run_dir / "compare-knn_uf" / "comparison.md").read_text()
    assert (run_dir / "knn_uf-ratio-1.json").is_file() and (run_dir / "knn_uf-lower-bound.json").is_file()
    after = {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*/done.json")}
    assert {name: after[name] for name in computed} == computed  # the deployment's stages: reused, not recomputed
    assert len(list((run_dir / "stages").glob("train_backbone-*/done.json"))) == 1

    child = flow_run(env, "semi-supervised[knn_uf-ratio-1]")["parameters"]
    assert child["method"] == "knn_uf" and child["method_params"] == {}  # knn_uf's defaults, not Clusformer's
    assert child["min_confidence"] == 0.0  # sent although equal to semi-supervised's default
    assert child["k"] == 31 and child["clusterer_holdout"] == 0.3  # the deployment's: not sent
    assert child["run_dir"] == str(run_dir) and child["labels"] == "clusters" and child["ratio"] == 1.0


def flow_run(env: dict[str, str], name: str) -> dict:
    """The parameters and tags the server recorded for the flow run called ``name``."""
    script = ("import json, sys; from prefect.client.orchestration import get_client; "
              "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName; "
              "c = get_client(sync_client=True).__enter__(); "
              "(run,) = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[sys.argv[1]]))); "
              "print(json.dumps({'parameters': run.parameters, 'tags': run.tags}))")
    read = subprocess.run([sys.executable, "-c", script, name], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert read.returncode == 0, read.stdout + read.stderr
    return json.loads(read.stdout.splitlines()[-1])


def test_a_deployment_reads_the_variable_set_after_it_and_trains_with_torchrun(deployed, tmp_path, face_folders):
    """The deployments exist before ``faces_path`` is set: a run with an empty data_path reads the variable
    when it starts. Its training runs as two gloo ranks under torchrun in the train task, its evaluation is
    on a MegaFace-layout set, and a rerun resumes from the trained stage (evaluation recomputed only)."""
    env, worker_log = deployed
    faces, probes, distractors = face_folders
    run_dir = tmp_path / "run"
    params = {**OVERRIDES, "data_source": "folder", "data_path": None, "data_options": {"labelled": 1, "unlabelled": 1},
              "train_options": {"batch_size": 6, "nproc_per_node": 2}, "distractor_sizes": [5, 20],
              "eval_set": {"probes": str(probes), "distractors": str(distractors)}, "run_dir": str(run_dir)}
    assert prefect("variable", "set", "faces_path", str(faces), env=env).returncode == 0
    run_deployment(env, worker_log, params)
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["n_labelled"] == 5 * 4  # half of the folder's 10 people, 4 images each
    (done,) = (run_dir / "stages").glob("train_backbone-*/done.json")
    assert "trained by 2 processes (DDP)" in (done.parent / "train_torchrun.log").read_text()
    trained_at = done.stat().st_mtime_ns

    run_deployment(env, worker_log, {**params, "distractor_sizes": [20]})
    again = json.loads((run_dir / "run.json").read_text())
    assert done.stat().st_mtime_ns == trained_at  # the trained stage was reused, not retrained
    assert list(again["rank1_before"]) == ["20"] and again["rank1_before"]["20"] == summary["rank1_before"]["20"]


def test_the_demo_deployment_runs_make_demos_settings() -> None:
    import yaml

    from flows.demo import DEMO_PARAMETERS

    deployments = {d["name"]: d["parameters"] for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
    demo = deployments["demo"]
    expected = {k: v for k, v in DEMO_PARAMETERS.items() if k not in ("ratios", "max_parallel")}
    assert {k: demo.get(k) for k in expected} == expected
    assert demo["ratio"] == max(DEMO_PARAMETERS["ratios"]) and demo["labels"] == "clusters"


def test_every_demo_method_builds_and_caps_its_clusters() -> None:
    """``python -m flows.demo --method M``: each method's parameters make that method, every one capped at the demo's
    cluster size; ``clusformer+infomap`` partitions with Infomap at the Markov time the bench chose for it."""
    from clustering.base import make_method
    from flows.demo import CLUSTER_CAP, METHOD_PARAMS

    for name, params in METHOD_PARAMS.items():
        method = make_method(name, **params)
        settings = getattr(method, "config", method)
        assert CLUSTER_CAP in {getattr(settings, "max_size", None), getattr(settings, "max_cluster_size", None)}, name
    config = make_method("clusformer+infomap", **METHOD_PARAMS["clusformer+infomap"]).config
    assert (config.partition, config.infomap_markov_time) == ("infomap", 1.25)


def test_ms1m_deployments_run_the_confirmed_configuration_at_the_papers_sizes_and_keep_the_papers_algorithms() -> None:
    """ms1m / ms1m-clusformer: each method at its paper's sizes with the project's pieces and an Infomap partition
    (the confirmation draws' leader); ms1m-paper / ms1m-clusformer-paper: the papers' algorithms; ms1m-full: the
    project's FaceT with union-find. All the same run otherwise, each summary under its own label."""
    import yaml

    from clustering.base import make_method

    deployments = {d["name"]: d["parameters"] for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
                   if d["entrypoint"].endswith(":semi_supervised")}
    names = ("ms1m", "ms1m-clusformer", "ms1m-paper", "ms1m-clusformer-paper")
    rest = [{k: v for k, v in deployments[name].items() if k not in ("method", "method_params", "label")} for name in names]
    assert all(other == rest[0] for other in rest[1:])  # the same run otherwise
    assert len({deployments[name].get("label", "run") for name in names}) == len(names)  # one summary each
    configs = {name: make_method(deployments[name]["method"], **deployments[name]["method_params"]).config
               for name in (*names, "ms1m-full")}
    for name in ("ms1m", "ms1m-paper", "ms1m-full"):
        cfg = configs[name]
        assert (cfg.hop1, cfg.depth, cfg.heads * cfg.head_dim, cfg.epochs) == (150, 2, 256, 60), name
        assert deployments[name]["k"] >= cfg.hop1 + 1  # the flow's graph is deep enough for FaceT's sequences
    for name in ("ms1m-clusformer", "ms1m-clusformer-paper"):
        cfg = configs[name]
        assert (cfg.k, cfg.d_model, cfg.nhead, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.epochs, cfg.lr) == \
            (64, 256, 8, 6, 6, 50, 1e-4), name
    project = configs["ms1m"]
    assert (project.pair_stats, project.edge_embedding, project.loss_weighting, project.link_rule, project.partition,
            project.infomap_weight, project.infomap_markov_time) == \
        (True, "concat_product", "balanced", "tuned", "infomap", "sqrt_odds", 2.0)
    assert configs["ms1m-full"] == dataclasses.replace(project, partition="union_find")
    paper = configs["ms1m-paper"]
    assert (paper.pair_stats, paper.edge_embedding, paper.loss_weighting, paper.link_rule, paper.partition) == \
        (False, "concat", "none", "any", "union_find")
    clusformer, clusformer_paper = configs["ms1m-clusformer"], configs["ms1m-clusformer-paper"]
    assert (clusformer.head, clusformer.pair_stats, clusformer.partition, clusformer.infomap_weight) == \
        ("product", True, "infomap", "probability")
    assert (clusformer_paper.head, clusformer_paper.pair_stats, clusformer_paper.partition) == ("paper", False, "union_find")


def test_every_deployments_parameters_fit_the_flows_parameter_form() -> None:
    """What prefect.yaml stores passes the flow's typed parameters (Literal names, the option models), as the
    server checks a run's parameters against the deployment's schema."""
    import yaml

    from flows.compare_ratios import compare_ratios
    from flows.semi_supervised import semi_supervised

    flows = {"flows/semi_supervised.py:semi_supervised": semi_supervised,
             "flows/compare_ratios.py:compare_ratios": compare_ratios}
    for deployment in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]:
        flow = flows[deployment["entrypoint"]]
        validated = flow.validate_parameters(deployment["parameters"])
        name = "method" if flow is semi_supervised else "deployment"
        assert validated[name] == deployment["parameters"][name], deployment["name"]
