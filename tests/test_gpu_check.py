"""bench/gpu_check.py at toy sizes on the CPU: every stage runs in its own process and reports its
figures, on an interpreter where prefect, albumentations and infomap cannot be imported (the lent
GPU machine has none of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_GPU_MACHINE = ("prefect", "albumentations", "infomap")


@pytest.fixture
def without_orchestration_packages(tmp_path) -> dict[str, str]:
    """An environment whose PYTHONPATH shadows the packages the GPU machine lacks with failing imports."""
    blocked = tmp_path / "blocked"
    for name in ABSENT_ON_GPU_MACHINE:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {**os.environ, "PYTHONPATH": f"{blocked}{os.pathsep}{REPO_ROOT}", "OMP_NUM_THREADS": "1"}


def test_tiny_cpu_run_reports_every_stage(tmp_path, without_orchestration_packages) -> None:
    """With an IR trunk (``--trunk``, as the ms1m deployments train), passed on to every stage's process."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out),
                           "--trunk", "iresnet18"],
                          cwd=REPO_ROOT, env=without_orchestration_packages, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    stages = {row["stage"]: row for row in report["stages"]}
    assert list(stages) == ["train", "extract", "knn", "facet", "clusformer", "identification", "ddp", "parity"]
    assert all(row["status"] == "ok" for row in stages.values()), stages
    assert stages["train"]["train_img_per_s"] > 0 and stages["train"]["train_loss_finite"]
    assert stages["train"]["train_trunk"] == "iresnet18"
    # counted: 0.2125 GMACs per 32-px image (IR-18 at 112 px: 2.60, every layer scaling with the pixels)
    assert 0.2 < stages["train"]["train_gmacs_per_image"] == stages["extract"]["extract_gmacs_per_image"] < 0.23
    assert stages["extract"]["extract_dim"] == 256
    assert stages["knn"]["knn_self_first"] == 1.0 and stages["knn"]["knn_rows"] == 2000
    assert stages["facet"]["facet_probs_finite"] and stages["clusformer"]["clusformer_probs_finite"]
    assert stages["facet"]["facet_seconds_584k"] == pytest.approx(584_000 / stages["facet"]["facet_nodes_per_s"])
    assert stages["identification"]["identification_rank1"] > 0.9  # tight probes among random distractors
    assert stages["ddp"]["ddp_same_weights"] and stages["ddp"]["ddp_losses_finite"]
    parity = stages["parity"]  # CPU against CPU here: the same answers, and the training step fits one batch
    assert parity["parity_extract_min_cosine"] > 0.9999 and parity["parity_knn_recall"] == 1.0
    assert parity["parity_cmc_max_diff"] == 0.0 and parity["parity_facet_max_diff"] < 1e-5
    assert parity["parity_fit_loss_ratio"] < 0.5
    assert {t["verdict"] for t in report["targets"]} == {"-"}  # targets are judged on a full CUDA run only
    assert "train_img_per_s" in done.stdout and "verdict" in done.stdout


def test_a_failing_stage_is_reported_and_the_others_still_run(tmp_path, without_orchestration_packages) -> None:
    env = {**without_orchestration_packages}
    blocked = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    (blocked / "faiss").mkdir()
    (blocked / "faiss" / "__init__.py").write_text("raise ImportError('faiss is not installed here')\n")
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out),
                           "--stages", "knn", "identification"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1  # a stage failed
    stages = {row["stage"]: row for row in json.loads(out.read_text())["stages"]}
    assert stages["knn"]["status"].startswith("failed") and "faiss" in stages["knn"]["status"]
    assert stages["identification"]["status"] == "ok"


def test_clustering_table_starts_without_albumentations(without_orchestration_packages) -> None:
    """The clustering bench runs on the GPU machine: only --backbone-real (which trains a backbone) needs
    albumentations, so the other tables must not import it (a bug found on the first GPU run)."""
    done = subprocess.run([sys.executable, "-m", "bench.clustering_table", "--help"], cwd=REPO_ROOT,
                          env=without_orchestration_packages, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--backbone-real" in done.stdout
