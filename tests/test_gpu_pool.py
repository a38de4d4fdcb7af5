"""The GPU pool through a real Prefect server and worker: an ms1m run picked up by a worker without a usable
GPU fails before any stage, naming the host, the GPU the worker was given (CUDA_VISIBLE_DEVICES, which its
runs inherit) and the cause, and the failure is sent through the notification block the Prefect Variable
names (a webhook block posting to a local HTTP server). Also: ms1m-full's evaluation set read from Variables,
and the compare-ratios deployment registered with its parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect_clients import on_server

from tests.test_deployment import free_port, prefect, stop, wait_healthy

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_POOL, CPU_POOL = "semiface-gpu", "semiface"
WORKER_GPU = "3"  # the GPU this worker is given: its runs must see it
BLOCK = "custom-webhook/semiface-failures"


class Webhook(BaseHTTPRequestHandler):
    """Records the JSON body of every POST (the notification block's request)."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", 0))
        Webhook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def gpu_pool(tmp_path_factory) -> Iterator[dict]:
    """Server, both pools, ``prefect deploy --all``, a notification block and its Variable, and one worker on
    the GPU pool given GPU 3 (``CUDA_VISIBLE_DEVICES``, ``--limit 1``): {env, worker_log, deployed}."""
    tmp_path = tmp_path_factory.mktemp("prefect-gpu")
    port, home = free_port(), tmp_path / "prefect-home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_PROFILE", None)
    env.pop("SEMIFACE_NOTIFY_BLOCK", None)
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        wait_healthy(env["PREFECT_API_URL"], server, timeout=180)
        for pool in (CPU_POOL, GPU_POOL):
            created = prefect("work-pool", "create", pool, "--type", "process", env=env)
            assert created.returncode == 0, created.stdout + created.stderr
        deployed = prefect("--no-prompt", "deploy", "--all", env=env, timeout=180)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        block_script = ("import sys; from prefect.blocks.notifications import CustomWebhookNotificationBlock as B; "
                        "B(name='semiface', url=sys.argv[1], json_data={'subject': '{{subject}}', "
                        "'body': '{{body}}'}).save(sys.argv[2])")
        saved = subprocess.run([sys.executable, "-c", block_script, f"http://127.0.0.1:{webhook.server_port}/",
                                BLOCK.split("/")[1]], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                               timeout=120)
        assert saved.returncode == 0, saved.stdout + saved.stderr
        assert prefect("variable", "set", "semiface_notify_block", BLOCK, env=env).returncode == 0
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", GPU_POOL, "--limit", "1"],
                cwd=tmp_path, env={**env, "CUDA_VISIBLE_DEVICES": WORKER_GPU}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        yield {"env": env, "worker_log": worker_log, "deployed": deployed.stdout}
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
        webhook.shutdown()


def client_script(env: dict[str, str], script: str, *args: str) -> str:
    """The last line ``script`` prints, run against the test server."""
    ran = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout.strip().splitlines()[-1]


def test_an_ms1m_run_on_a_worker_without_a_gpu_fails_before_any_stage_and_notifies(gpu_pool, tmp_path):
    env = gpu_pool["env"]
    run_dir = tmp_path / "ms1m"
    ran = prefect("deployment", "run", "semi-supervised/ms1m", "--param", f"run_dir={run_dir}", "--watch",
                  "--watch-interval", "2", "--watch-timeout", "300", env=env, timeout=320)
    output = ran.stdout + ran.stderr
    assert "FAILED" in output.upper(), output + gpu_pool["worker_log"].read_text()
    state = json.loads(client_script(env, (
        "import json; from prefect.client.orchestration import get_client; "
        "from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName; "
        "c = get_client(sync_client=True).__enter__(); "
        "(run,) = c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=['ms1m']))); "
        "print(json.dumps({'name': run.name, 'type': run.state.type.value, 'message': run.state.message}))")))
    assert state["type"] == "FAILED"
    assert "CUDA is not available on host" in state["message"]
    assert f"CUDA_VISIBLE_DEVICES '{WORKER_GPU}'" in state["message"]  # the worker's GPU reached its run
    assert "needs a worker on a GPU machine" in state["message"]
    assert not run_dir.exists()  # failed before any stage: nothing written
    (sent,) = [body for body in Webhook.received if state["name"] in body["subject"]]
    assert sent["subject"] == f"semiface: semi-supervised run {state['name']} Failed"
    assert "CUDA is not available" in sent["body"] and f"run_dir='{run_dir}'" in sent["body"]


def test_the_sweep_deployment_is_registered_with_its_run_folder(gpu_pool):
    assert "compare-ratios/ms1m-full" in gpu_pool["deployed"]
    parameters = json.loads(client_script(gpu_pool["env"], (
        "import json; from prefect.client.orchestration import get_client; "
        "c = get_client(sync_client=True).__enter__(); "
        "print(json.dumps(c.read_deployment_by_name('compare-ratios/ms1m-full').parameters))")))
    assert parameters["deployment"] == "semi-supervised/ms1m-full" and parameters["run_dir"] == "runs/ms1m-full"


def test_ms1m_fulls_evaluation_set_is_read_from_the_variables_when_the_run_starts(gpu_pool, tmp_path):
    env = gpu_pool["env"]
    script = ("import json; from flows.preflight import runtime_eval_set; from semiface.errors import ConfigError\n"
              "try: print(json.dumps(runtime_eval_set({'from_variables': 'megaface'})))\n"
              "except ConfigError as exc: print(json.dumps({'error': str(exc)}))")
    missing = json.loads(client_script(env, script))
    assert "megaface_probes" in missing["error"] and "megaface_distractors" in missing["error"]
    values = {"probes": tmp_path / "facescrub_images", "distractors": tmp_path / "megaface_images",
              "distractor_noise": tmp_path / "megaface_noises.txt"}
    for key, value in values.items():
        assert prefect("variable", "set", f"megaface_{key}", str(value), env=env).returncode == 0
    assert json.loads(client_script(env, script)) == {key: str(value) for key, value in values.items()}


TINY_FOLDER_RUN = {
    "data_source": "folder", "data_options": {"labelled": 0.6, "unlabelled": 0.4}, "labels": "labelled_only",
    "method": "knn_uf", "backbone": "resnet10t", "epochs": 1, "train_options": {"batch_size": 8}, "k": 8,
    "device": "cpu", "num_workers": 0, "extract_batch_size": 64,
}


def test_distractor_sizes_beyond_the_set_fail_the_run_before_training(gpu_pool, tmp_path, face_folders):
    """Counted up front (the demo's settings) or right after the data stages (a folder): never silently capped."""
    from flows.semi_supervised import semi_supervised
    from semiface.errors import ConfigError

    faces, probes, distractors = face_folders
    with on_server(gpu_pool["env"]["PREFECT_API_URL"]):
        with pytest.raises(ConfigError, match=r"\[1000\] larger than the 30 distractor images of the demo"):
            semi_supervised(run_dir=str(tmp_path / "demo"), data_source="demo", device="cpu",
                            data_options={"n_distractor_ids": 30}, distractor_sizes=[10, 1000])
        assert not (tmp_path / "demo").exists()
        run_dir = tmp_path / "folder"
        with pytest.raises(ConfigError, match=r"\[25\] larger than the 20 distractor images of the evaluation set"):
            semi_supervised(run_dir=str(run_dir), data_path=str(faces), image_size=32, distractor_sizes=[5, 25],
                            eval_set={"probes": str(probes), "distractors": str(distractors)}, **TINY_FOLDER_RUN)
    assert {p.parent.name.split("-")[0] for p in (run_dir / "stages").glob("*/done.json")} <= {"prepare_data", "prepare_eval"}
    assert not list((run_dir / "stages").glob("train_backbone-*"))


def test_an_unaligned_eval_set_is_aligned_once_in_its_own_stage_and_evaluated_aligned(gpu_pool, tmp_path,
                                                                                      face_folders):
    """The generated faces are 32 px; the model takes 48: the set is aligned (stage align_eval), the evaluation
    reads the aligned images, and a rerun reuses the stage."""
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from flows.semi_supervised import semi_supervised

    faces, probes, distractors = face_folders
    run_dir = tmp_path / "run"
    params = {**TINY_FOLDER_RUN, "image_size": 48, "distractor_sizes": [5, 20], "run_dir": str(run_dir),
              "data_path": str(faces), "eval_set": {"probes": str(probes), "distractors": str(distractors)}}
    with on_server(gpu_pool["env"]["PREFECT_API_URL"]):
        summary = semi_supervised(**params)
        (done,) = (run_dir / "stages").glob("align_eval-*/done.json")
        record = json.loads(done.read_text())
        assert record["summary"]["aligned"] == 12 + 20
        listed = (done.parent / "no_face.txt").read_text().split()
        assert len(listed) == sum(record["summary"]["no_face"].values())
        from PIL import Image

        aligned = sorted((done.parent / "images").rglob("*.png"))
        assert len(aligned) == 32 and all(Image.open(path).size == (48, 48) for path in aligned)
        results = json.loads(Path(summary["results_before"]).read_text())
        assert "align_eval" in results["inputs"]["manifest"] and results["inputs"]["n_distractor_rows"] == 20
        stamp = done.stat().st_mtime_ns
        semi_supervised(**params)
    assert done.stat().st_mtime_ns == stamp  # the aligned set is a cached stage
