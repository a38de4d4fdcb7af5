"""bench/gpu_check.py at toy sizes on the CPU: every stage runs in its own process and reports its
figures, on an interpreter where prefect, albumentations, faiss and infomap cannot be imported (the
lent GPU machine has none of them): a stage that needs one says it is skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.gpu_check import STAGES, stage_runs, verdicts
from bench.gpu_job_stages import exact_neighbours

REPO_ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_GPU_MACHINE = ("prefect", "albumentations", "faiss", "infomap")


def _blocked_env(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """An environment whose PYTHONPATH shadows ``names`` with packages whose import fails."""
    blocked = folder / "blocked"
    for name in names:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {**os.environ, "PYTHONPATH": f"{blocked}{os.pathsep}{REPO_ROOT}", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def without_orchestration_packages(tmp_path) -> dict[str, str]:
    return _blocked_env(tmp_path, ABSENT_ON_GPU_MACHINE)


def _run(tmp_path: Path, env: dict[str, str], *args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done, (json.loads(out.read_text()) if out.is_file() else {})


def _check_job_stages(stages: dict[str, dict], trunk: str) -> None:
    """What every job stage must report at toy sizes on this CPU."""
    assert stages["data"]["faces_s"] > 0 and stages["data"]["unlabelled_s"] > 0
    loader = stages["loader"]
    assert loader["img_per_s_cpu_decode"] > 0 and loader["img_per_s_device_decode"] > 0 and loader["workers"] >= 1

    train = stages[f"train_e2e:{trunk}"]
    assert train["trunk"] == trunk and train["loss_finite"]
    for decode in ("cpu", "device"):
        assert train[f"img_per_s_{decode}_decode"] > 0 and 0 <= train[f"wait_share_{decode}_decode"] < 1
        assert 0 <= train[f"data_bound_share_{decode}_decode"] < 1
    assert train["model_only_img_per_s"] > 0

    extract = stages[f"extract_e2e:{trunk}"]
    assert extract["rows"] == 2 * 60 and extract["dim"] == 256  # 60 faces, each row extracted twice
    for decode in ("cpu", "device"):
        assert 0 < extract[f"img_per_s_{decode}_decode"] < extract[f"img_per_s_after_first_batch_{decode}_decode"]
    # the same images decoded by libjpeg-turbo in the workers and by torchvision: the same embeddings
    assert extract["decode_paths_min_cosine"] > 0.999
    assert extract["gmacs_per_image"] == train["gmacs_per_image"]

    facet = stages["facet_train"]
    assert facet["rows"] == 600 and facet["steps_timed"] == 3 and facet["loss_finite"] and facet["step_ms"] > 0
    # the extrapolation is the paper's schedule on MS1M's labelled part at the measured step time
    assert facet["ms1m_steps"] == facet["paper_epochs"] * -(-466_000 // facet["batch"])
    assert facet["ms1m_hours_extrapolated"] == pytest.approx(facet["ms1m_steps"] * facet["step_ms"] / 3.6e6)
    budget_steps = facet["paper_epochs"] * facet["max_train_pivots_for_2h"] / facet["batch"]
    assert budget_steps * facet["step_ms"] / 3.6e6 == pytest.approx(2.0, rel=0.05)
    assert facet["knn_backend"].startswith("torch-cpu")  # faiss is not importable

    for method in ("facet", "clusformer"):
        row = stages[f"cluster_e2e:{method}"]
        assert row["status"] == "ok" and row["rows"] == 900
        assert row["e2e_s"] == pytest.approx(row["knn_s"] + row["inference_links_partition_s"])
        # 3 + 3 training steps: far from trained, but the partition follows the identities
        # (measured FP 0.83 FaceT, 0.90 Clusformer; a random partition of this set scores ~0.01)
        assert row["pairwise_f"] > 0.6 and row["bcubed_f"] > 0.6

    memmap = stages["facet_memmap"]
    assert memmap["in_memory_nodes_per_s"] > 0 and memmap["memmap_nodes_per_s"] > 0
    assert memmap["same_labels_share"] == 1.0  # the same links whether the rows are in memory or mapped
    assert stages["knn_ivf"]["status"].startswith("skipped: faiss not importable")
    for method in ("facet", "clusformer"):
        if f"cluster_e2e_infomap:{method}" in stages:
            assert stages[f"cluster_e2e_infomap:{method}"]["status"].startswith("skipped: infomap not importable")


# The default run's subset: every job stage but clusformer_train (its code is facet_train's, and
# cluster_e2e:clusformer fits Clusformer the same way when no saved model is there).
QUICK_STAGES = ("loader", "train_e2e", "extract_e2e", "facet_train", "cluster_e2e", "facet_memmap", "knn_ivf",
                "cluster_e2e_infomap")


def test_tiny_job_stages_run_without_orchestration_packages(tmp_path, without_orchestration_packages) -> None:
    """The job stages with an IR trunk, passed on to every stage's process, as on a bare GPU host."""
    done, report = _run(tmp_path, without_orchestration_packages, "--trunk", "iresnet18", "--stages", *QUICK_STAGES)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = {row["stage"]: row for row in report["stages"]}
    assert list(stages) == stage_runs(list(QUICK_STAGES), ["iresnet18"])
    _check_job_stages(stages, "iresnet18")
    assert {t["verdict"] for t in report["targets"]} == {"-"}  # targets are judged on a full CUDA run only
    assert "img_per_s_device_decode" in done.stdout and "verdict" in done.stdout


@pytest.mark.slow
def test_every_stage_runs_without_orchestration_packages(tmp_path, without_orchestration_packages) -> None:
    """``--stages all``: the job stages and the kernel stages (train, extract, knn, facet, clusformer,
    identification, ddp, parity)."""
    done, report = _run(tmp_path, without_orchestration_packages, "--stages", "all", "--trunk", "iresnet18")
    assert done.returncode == 0, done.stdout + done.stderr
    stages = {row["stage"]: row for row in report["stages"]}
    assert list(stages) == stage_runs(list(STAGES), ["iresnet18"])
    _check_job_stages(stages, "iresnet18")
    assert stages["clusformer_train"]["loss_finite"] and stages["clusformer_train"]["step_ms"] > 0
    assert stages["train"]["train_img_per_s"] > 0 and stages["train"]["train_loss_finite"]
    assert stages["train"]["train_trunk"] == "iresnet18"
    # counted: 0.2125 GMACs per 32-px image (IR-18 at 112 px: 2.60, every layer scaling with the pixels)
    assert 0.2 < stages["train"]["train_gmacs_per_image"] == stages["extract"]["extract_gmacs_per_image"] < 0.23
    assert stages["knn"]["knn_self_first"] == 1.0 and stages["knn"]["knn_backend"].startswith("torch-cpu")
    assert stages["facet"]["facet_probs_finite"] and stages["clusformer"]["clusformer_probs_finite"]
    assert stages["identification"]["identification_rank1"] > 0.9  # tight probes among random distractors
    assert stages["ddp"]["ddp_same_weights"] and stages["ddp"]["ddp_losses_finite"]
    parity = stages["parity"]  # CPU against CPU here: the same answers, and the training step fits one batch
    assert parity["parity_extract_min_cosine"] > 0.9999 and parity["parity_knn_recall"] == 1.0
    assert parity["parity_cmc_max_diff"] == 0.0 and parity["parity_facet_max_diff"] < 1e-5
    assert parity["parity_fit_loss_ratio"] < 0.5


def test_ivf_knn_stage_measures_recall_where_faiss_imports(tmp_path) -> None:
    """With faiss importable (here the CPU build; on the GPU machine a GPU build), ``knn_ivf`` runs."""
    pytest.importorskip("faiss")
    done, report = _run(tmp_path, _blocked_env(tmp_path, ("prefect", "albumentations")), "--stages", "knn_ivf")
    assert done.returncode == 0, done.stdout + done.stderr
    row = {r["stage"]: r for r in report["stages"]}["knn_ivf"]
    assert row["status"] == "ok" and row["rows"] == 3_000 and row["queries"] == 200
    assert row["backend"] == "faiss-cpu" and row["recall"] > 0.9  # measured 0.992 (nprobe 32 of 219 lists)


def test_a_failing_stage_is_reported_and_the_others_still_run(tmp_path, without_orchestration_packages) -> None:
    done, report = _run(tmp_path, without_orchestration_packages, "--stages", "train", "identification",
                        "--trunk", "no_such_trunk")
    assert done.returncode == 1  # a stage failed
    stages = {row["stage"]: row for row in report["stages"]}
    assert stages["train"]["status"].startswith("failed") and "no_such_trunk" in stages["train"]["status"]
    assert stages["identification"]["status"] == "ok"


def test_stage_runs_expand_per_trunk_and_method_after_the_data() -> None:
    assert stage_runs(["knn", "ddp"], ["resnet50"]) == ["knn", "ddp"]  # nothing generated
    assert stage_runs(["train_e2e", "cluster_e2e", "cluster_e2e_infomap"], ["iresnet50", "resnet50"]) == [
        "data", "train_e2e:iresnet50", "train_e2e:resnet50", "cluster_e2e:facet", "cluster_e2e:clusformer",
        "cluster_e2e_infomap:facet", "cluster_e2e_infomap:clusformer"]


def test_targets_are_judged_on_checked_runs_only() -> None:
    rows = [{"stage": "train_e2e:resnet50", "status": "ok", "wall_s": 95.0, "img_per_s_device_decode": 9_000.0},
            {"stage": "cluster_e2e:facet", "status": "ok", "wall_s": 50.0, "e2e_s": 61.0},
            {"stage": "facet_memmap", "status": "skipped: x", "wall_s": 3.0}]
    checked = {t["figure"]: t["verdict"] for t in verdicts(rows, 400.0, checked=True)}
    assert checked == {"train_e2e:resnet50 img_per_s_device_decode": "pass", "cluster_e2e:facet e2e_s": "FAIL",
                       "facet_memmap slowdown": "missing", "train_e2e:resnet50 wall_s": "FAIL",
                       "cluster_e2e:facet wall_s": "pass", "facet_memmap wall_s": "pass", "script seconds": "pass"}
    assert {t["verdict"] for t in verdicts(rows, 400.0, checked=False)} == {"-", "missing"}


def test_exact_neighbours_of_a_few_queries_match_a_full_search() -> None:
    import torch

    rng = np.random.default_rng(0)
    features = rng.standard_normal((700, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    queries = np.array([0, 5, 699, 123])
    found = exact_neighbours(features, queries, 7, torch.device("cpu"), chunk=64)  # 11 chunks, the last short
    expected = np.argsort(-(features[queries] @ features.T), axis=1)[:, :7]
    np.testing.assert_array_equal(found, expected)
    assert (found[:, 0] == queries).all()


def test_clustering_table_starts_without_albumentations(without_orchestration_packages) -> None:
    """The clustering bench runs on the GPU machine: only --backbone-real (which trains a backbone) needs
    albumentations, so the other tables must not import it (a bug found on the first GPU run)."""
    done = subprocess.run([sys.executable, "-m", "bench.clustering_table", "--help"], cwd=REPO_ROOT,
                          env=without_orchestration_packages, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--backbone-real" in done.stdout
