"""The deployments of prefect.yaml and what a run checks before any stage: GPU routing, the ms1m-full split
reaching the papers' 5.21M unlabelled faces, distractor sizes against the set they are drawn from, and the
failure-notification hooks (here with a stand-in block; through a real server, worker and webhook in
tests/test_gpu_pool.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from uuid import uuid4

import numpy as np
import pandas as pd
import pytest
import yaml

from clustering.pseudo_labels import sample_unlabelled
from flows import notifications
from flows.preflight import (
    DistractorCount,
    check_device_here,
    check_distractor_sizes,
    check_prepared_distractors,
    known_distractor_count,
)
from semiface.errors import ConfigError
from tasks.prepare_data import data_options_for, identity_roles, split_identities

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_POOL, CPU_POOL = "semiface-gpu", "semiface"
MS1M_DEPLOYMENTS = ("ms1m", "ms1m-clusformer", "ms1m-paper", "ms1m-clusformer-paper", "ms1m-full")
# faces_emore (MS1M-ArcFace, InsightFace's RecordIO): 85,742 identities, 5,822,653 images.
MS1M_IDENTITIES, MS1M_IMAGES = 85_742, 5_822_653
# learn-to-cluster's MS1M benchmark: part0_train (8,573 identities, 576,494 images) labelled and nine
# unlabelled parts of about 584K images each, "Benchmarks (5.21M)" (its DATASET.md).
PAPER_UNLABELLED = 5_210_000


def deployments() -> dict[tuple[str, str], dict]:
    """(entrypoint function, deployment name) -> its entry in prefect.yaml, anchors resolved."""
    loaded = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    return {(d["entrypoint"].rsplit(":", 1)[1], d["name"]): d for d in loaded}


def run_deployment_entry(name: str) -> dict:
    return deployments()[("semi_supervised", name)]


def ms1m_counts(spread: float, seed: int) -> pd.Series:
    """Images per identity with MS1M's identity and image totals: equal counts (spread 0), or log-normal
    ones (MS1M's own run from 2 to several hundred a person), indexed as the RecordIO source names them."""
    if spread == 0:
        counts = np.full(MS1M_IDENTITIES, MS1M_IMAGES // MS1M_IDENTITIES)
    else:
        weights = np.random.default_rng(seed).lognormal(0.0, spread, MS1M_IDENTITIES)
        counts = np.maximum(2, np.floor(weights / weights.sum() * MS1M_IMAGES)).astype(np.int64)
    counts[: MS1M_IMAGES - counts.sum()] += 1
    assert counts.sum() == MS1M_IMAGES
    return pd.Series(counts, index=[str(i) for i in range(MS1M_IDENTITIES)]).sort_index()


def test_the_ms1m_deployments_go_to_the_gpu_pool_as_cuda_runs_of_ir50() -> None:
    for name in MS1M_DEPLOYMENTS:
        entry = run_deployment_entry(name)
        assert entry["work_pool"]["name"] == GPU_POOL, name
        assert entry["parameters"]["device"] == "cuda" and entry["parameters"]["backbone"] == "iresnet50", name
        # One run per GPU is the GPU workers' (one per GPU, --limit 1), across the deployments: a limit per
        # deployment would let two deployments share a GPU and stop a sweep from using two GPUs.
        assert "concurrency_limit" not in entry, name
        assert "CUDA_VISIBLE_DEVICES" not in entry["work_pool"].get("job_variables", {}).get("env", {}), name
    demo = run_deployment_entry("demo")
    assert demo["work_pool"]["name"] == CPU_POOL and demo["parameters"]["device"] == "cpu"


def test_the_sweep_deployment_runs_ms1m_full_from_the_cpu_pool_in_its_run_folder() -> None:
    sweep = deployments()[("compare_ratios", "ms1m-full")]
    assert sweep["entrypoint"] == "flows/compare_ratios.py:compare_ratios"
    assert sweep["work_pool"]["name"] == CPU_POOL  # the parent only waits for the GPU runs
    flow_name, deployment = sweep["parameters"]["deployment"].split("/")
    assert flow_name == "semi-supervised" and deployment in MS1M_DEPLOYMENTS
    assert sweep["parameters"]["run_dir"] == run_deployment_entry(deployment)["parameters"]["run_dir"]
    assert max(sweep["parameters"]["ratios"]) == 9.0


@pytest.mark.parametrize(("spread", "seed"), [(0.0, 0), (0.6, 0), (0.6, 2)])
def test_ms1m_full_clusters_every_unlabelled_face_over_5_21m_on_ms1ms_counts(spread, seed) -> None:
    """The deployment's split and ratio through the project's own split and sampler: the pool holds 90 % of
    the identities and the ratio asked is above pool / N_L, so every unlabelled image is clustered."""
    params = run_deployment_entry("ms1m-full")["parameters"]
    options = data_options_for("recordio", params["data_options"])
    counts = ms1m_counts(spread, seed)
    roles = pd.Series(identity_roles(counts, options, params["seed"])).reindex(counts.index)
    manifest = pd.DataFrame({"split": np.repeat(roles.to_numpy(dtype=object), counts.to_numpy())})
    assert set(roles) == {"labelled", "unlabelled"}  # no probe or distractor share from MS1M
    sample = sample_unlabelled(manifest, params["ratio"], params["seed"])
    assert sample.available >= PAPER_UNLABELLED
    assert len(sample.index) == sample.available  # all of the unlabelled part
    assert 8.5 < sample.effective_ratio < 9.5  # r_U/L reached: about the papers' 9
    labelled_ids = int((roles == "labelled").sum())
    assert abs(labelled_ids - MS1M_IDENTITIES / 10) < 1  # 8,574: learn-to-cluster's part0 has 8,573


def test_ms1ms_distractor_sizes_fit_its_5_percent_distractor_share_and_1m_does_not() -> None:
    params = run_deployment_entry("ms1m")["parameters"]
    options = data_options_for("recordio", params["data_options"])
    counts = ms1m_counts(0.6, 0)
    roles = pd.Series(identity_roles(counts, options, params["seed"]))
    available = int(counts[roles[roles == "distractor"].index].sum())
    assert 250_000 < available < 330_000  # the "1,000,000 distractors" of before were these ~290K
    known = DistractorCount(available, "MS1M's distractor identities")
    check_distractor_sizes(params["distractor_sizes"], known, explicit=True)
    with pytest.raises(ConfigError, match=rf"\[1000000\] larger than the {available:,} distractor images"):
        check_distractor_sizes([10, 1_000_000], known, explicit=True)
    check_distractor_sizes([10, 1_000_000], known, explicit=False)  # the flow's defaults: capped, and said so


def test_a_recordio_sources_distractors_are_counted_up_front_as_the_split_will_draw_them(tmp_path) -> None:
    from backbone.data.recordio import record_manifest, write_insightface_rec

    rng = np.random.default_rng(3)
    per_identity = rng.integers(1, 9, size=60)
    labels = np.repeat(np.arange(60), per_identity)
    write_insightface_rec(tmp_path / "train.rec", labels.tolist(), [b"jpeg"] * len(labels))
    options = {"labelled": 0.3, "unlabelled": 0.3, "probe": 0.2, "distractor": 0.2}
    for seed in (0, 1):
        known = known_distractor_count("recordio", str(tmp_path), options, None, seed)
        split = split_identities(record_manifest(tmp_path / "train.rec"), data_options_for("recordio", options), seed)
        assert known is not None and known.count == int((split["split"] == "distractor").sum()) > 0
        assert str(tmp_path / "train.rec") in known.source
        with pytest.raises(ConfigError, match="distractor_sizes"):
            check_distractor_sizes([known.count + 1], known, explicit=True)


def test_demo_and_listed_distractors_are_counted_and_a_folder_waits_for_its_stage(tmp_path) -> None:
    demo = known_distractor_count("demo", None, {"n_distractor_ids": 30, "images_per_id": 4}, None, 0)
    assert demo is not None and demo.count == 30  # one image per distractor identity (DemoConfig's default)
    listing = tmp_path / "megaface_features_list.json_100_1"
    listing.write_text(json.dumps({"path": [f"{i % 7}/{i}.jpg" for i in range(100)]}))
    noise = tmp_path / "megaface_noises.txt"
    noise.write_text("# noise\n3.jpg\n5/12.jpg\n")
    eval_set = {"probes": str(tmp_path / "fs"), "distractors": str(listing), "distractor_root": str(tmp_path),
                "distractor_noise": str(noise)}
    listed = known_distractor_count("recordio", "/unused", {}, eval_set, 0)
    assert listed is not None and listed.count == 98 and "less 2" in listed.source
    (tmp_path / "flickr").mkdir()
    assert known_distractor_count("recordio", "/unused", {}, {**eval_set, "distractors": str(tmp_path / "flickr")},
                                  0) is None
    assert known_distractor_count("folder", str(tmp_path), {}, None, 0) is None
    with pytest.raises(ConfigError, match=r"\[200\] larger than the 150 distractor images of the evaluation set"):
        check_prepared_distractors([10, 200], True, {"images": {"distractor": 150}}, "the evaluation set")


def test_cuda_on_a_machine_without_a_gpu_fails_naming_the_host_and_the_gpu_pool(monkeypatch) -> None:
    import socket

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(ConfigError) as error:
        check_device_here("cuda")
    message = str(error.value)
    assert socket.gethostname() in message and "CUDA_VISIBLE_DEVICES '5'" in message
    assert "needs a worker on a GPU machine" in message
    check_device_here("cpu")
    check_device_here("auto")


def test_both_flows_notify_on_failure_and_on_crash() -> None:
    from flows.compare_ratios import compare_ratios
    from flows.semi_supervised import semi_supervised

    for flow in (semi_supervised, compare_ratios):
        assert notifications.notify_failure in flow.on_failure_hooks
        assert notifications.notify_failure in flow.on_crashed_hooks


def failed_run():
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Failed

    run = FlowRun(name="brave-otter", flow_id=uuid4(),
                  parameters={"label": "ratio-3", "run_dir": "/runs/ms1m", "ratio": 3.0, "k": 160})
    return run, Failed(message="Flow run encountered an exception: DataError: train.rec: truncated record")


@pytest.fixture
def local_logs():
    """The hook's run logger writes here only (no Prefect API to send its records to in these tests)."""
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield


class RecordingBlock:
    """Stands in for a notification block: records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def notify(self, body: str, subject: str | None = None) -> None:
        self.sent.append({"body": body, "subject": subject})


def test_a_failure_is_sent_through_the_block_the_setting_names(monkeypatch, caplog, local_logs) -> None:
    from prefect.blocks.core import Block

    from flows.semi_supervised import semi_supervised

    block, loaded = RecordingBlock(), []
    monkeypatch.setenv(notifications.NOTIFY_ENV, "slack-webhook/semiface-alerts")
    monkeypatch.setattr(Block, "load", classmethod(lambda cls, name: loaded.append(name) or block))
    run, state = failed_run()
    with caplog.at_level(logging.INFO):
        notifications.notify_failure(semi_supervised, run, state)
    assert loaded == ["slack-webhook/semiface-alerts"] and len(block.sent) == 1
    sent = block.sent[0]
    assert sent["subject"] == "semiface: semi-supervised run brave-otter Failed"
    assert "truncated record" in sent["body"] and "label='ratio-3'" in sent["body"]
    assert "run_dir='/runs/ms1m'" in sent["body"] and "k=" not in sent["body"]
    assert "sent through block 'slack-webhook/semiface-alerts'" in caplog.text


def test_without_a_block_or_with_a_broken_one_the_log_says_so_and_the_hook_does_not_raise(monkeypatch, caplog,
                                                                                          local_logs) -> None:
    from prefect.blocks.core import Block
    from prefect.variables import Variable

    from flows.semi_supervised import semi_supervised

    monkeypatch.delenv(notifications.NOTIFY_ENV, raising=False)
    monkeypatch.setattr(Variable, "get", classmethod(lambda cls, name, default=None: None))
    run, state = failed_run()
    with caplog.at_level(logging.INFO):
        notifications.notify_failure(semi_supervised, run, state)
    assert "no notification block configured" in caplog.text and "prefect variable set semiface_notify_block" in caplog.text

    def missing(cls, name):
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setenv(notifications.NOTIFY_ENV, "slack-webhook/gone")
    monkeypatch.setattr(Block, "load", classmethod(missing))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        notifications.notify_failure(semi_supervised, run, state)
    assert "through block 'slack-webhook/gone' not sent: Unable to find block document" in caplog.text
