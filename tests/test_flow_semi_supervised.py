"""The ``semi-supervised`` flow end to end on tiny generated faces (CPU), under a temporary Prefect server.

One run directory goes through: a first run where one stage fails once and is retried and a later
stage fails for good; a rerun that resumes at the failed stage (earlier stages cached); a third
run that skips every stage. Bad parameters fail before anything is written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.exceptions import ParameterTypeError

from flows.semi_supervised import semi_supervised
from semiface.code_version import code_version, version_tag
from semiface.errors import ConfigError, DataError
from tasks.common import FAULT_ENV, InjectedFault

TINY = {
    "data_options": {"n_labelled_ids": 6, "n_unlabelled_ids": 10, "n_probe_ids": 4, "n_distractor_ids": 30,
                     "images_per_id": 4},
    "method": "knn_uf", "backbone": "resnet10t", "image_size": 32, "epochs": 1,
    "train_options": {"batch_size": 8}, "k": 8, "distractor_sizes": [10, 30], "device": "cpu",
    "num_workers": 0, "extract_batch_size": 64,
}
STAGES_BEFORE_CLUSTER = {"prepare-data", "train-backbone", "build-knn", "train-clusterer"}


def read_task_runs(flow_run_id) -> list:
    """The task runs of a flow run in start order, once the server holds each one's final state (task
    run states reach it as events, a moment after the flow returns)."""
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                         sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
        if all(run.state is not None and run.state.is_final() for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name -> the names of its runs' final states (e.g. Completed, Cached, Failed)."""
    states: dict[str, list[str]] = {}
    for run in read_task_runs(flow_run_id):
        states.setdefault(run.name.split("[")[0], []).append(run.state.name)
    return states


def task_runs(flow_run_id, name: str) -> list:
    """The task runs called ``name`` of a flow run, in start order (their ``run_count``, ``state``)."""
    return [run for run in read_task_runs(flow_run_id) if run.name.split("[")[0] == name]


def done_markers(run_dir: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*/done.json")}


def test_flow_retries_resumes_and_skips(prefect_server, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # evaluate fails once (its retry succeeds); cluster fails once (no retries: the run fails there).
    monkeypatch.setenv(FAULT_ENV, "evaluate:1,cluster:1")
    first = semi_supervised(run_dir=str(run_dir), **TINY, return_state=True)
    assert first.is_failed()
    with pytest.raises(InjectedFault, match="cluster: injected fault 1/1"):
        first.result()
    states = task_states(first.state_details.flow_run_id)
    assert states["evaluate"] == ["Completed"]  # failed once, then completed on its retry
    assert states["cluster"] == ["Failed"]
    before = done_markers(run_dir)
    assert {name.split("-")[0] for name in before} == {"prepare_data", "train_backbone", "extract_features",
                                                         "evaluate", "build_knn", "train_clusterer"}

    # Rerun: the fault budget is spent; earlier stages come from the cache, the rest computes.
    second = semi_supervised(run_dir=str(run_dir), **TINY, return_state=True)
    summary = second.result()
    states = task_states(second.state_details.flow_run_id)
    for name in STAGES_BEFORE_CLUSTER:
        assert set(states[name]) == {"Cached"}, (name, states[name])
    for name in ("cluster", "merge-pseudo-labels", "retrain"):
        assert states[name] == ["Completed"], (name, states[name])
    for name in ("extract-features", "evaluate"):  # of the first model (cached), then of the retrained one
        assert states[name] == ["Cached", "Completed"], (name, states[name])
    assert all(done_markers(run_dir)[name] == mtime for name, mtime in before.items())  # not recomputed

    # The code version: in the run summary, in the records of the stages this run computed (not in their
    # keys: the earlier stages' records keep the version that computed them), and as a tag of the flow run.
    version = code_version()
    assert summary["code_version"] == version and set(version) == {"commit", "dirty"}
    retrained = json.loads(next((run_dir / "stages").glob("retrain-*/done.json")).read_text())
    assert retrained["runtime"]["code_version"] == version
    with get_client(sync_client=True) as client:
        assert version_tag(version) in client.read_flow_run(second.state_details.flow_run_id).tags

    # What the run produced, from the files it names.
    retrain = pd.read_parquet(summary["retrain_manifest"])
    pseudo = retrain[retrain["label_source"] == "pseudo"]
    assert len(pseudo) == summary["n_kept"] > 0
    assert pseudo["label"].min() == retrain.loc[retrain["label_source"] == "gt", "label"].max() + 1
    assert summary["n_sampled"] == 24 and summary["effective_ratio"] == 1.0
    for key in ("results_before", "results_after"):
        results = json.loads(Path(summary[key]).read_text())
        assert results["summary"]["largest_size"] == 30
    assert 0.0 <= summary["rank1_after_largest"] <= 1.0
    assert 0.0 <= summary["pairwise_f"] <= 1.0
    assert json.loads((run_dir / "run.json").read_text()) == summary

    # Same parameters again: every stage is skipped.
    third = semi_supervised(run_dir=str(run_dir), **TINY, return_state=True)
    assert third.result() == summary
    states = task_states(third.state_details.flow_run_id)
    assert len(states) == 9 and sum(len(v) for v in states.values()) == 12
    assert {s for runs in states.values() for s in runs} == {"Cached"}

    # A deterministic error (here a DataError) is not retried although the task retries (evaluate: once).
    def data_error(stage: str, cache_root: Path) -> None:
        if stage == "evaluate":
            raise DataError("features.npy", "injected: wrong dimension")

    monkeypatch.setattr("tasks.common.maybe_inject_fault", data_error)
    failed = semi_supervised(run_dir=str(run_dir), **TINY, refresh=["evaluate"], return_state=True)
    assert failed.is_failed()
    (evaluate_run,) = task_runs(failed.state_details.flow_run_id, "evaluate")
    assert evaluate_run.state.name == "Failed" and evaluate_run.run_count == 1
    monkeypatch.undo()

    # A stage that runs past its timeout (here 1 s; the stage would take 60) fails TimedOut, and is retried
    # like a transient failure.
    def slow(stage: str, cache_root: Path) -> None:
        if stage == "evaluate":
            time.sleep(60)

    monkeypatch.setattr("tasks.common.maybe_inject_fault", slow)
    started = time.monotonic()
    timed_out = semi_supervised(run_dir=str(run_dir), **TINY, refresh=["evaluate"],
                                stage_timeouts={"evaluate": 1 / 3600}, return_state=True)
    assert timed_out.is_failed() and time.monotonic() - started < 50
    (evaluate_run,) = task_runs(timed_out.state_details.flow_run_id, "evaluate")
    assert evaluate_run.state.name == "TimedOut" and evaluate_run.run_count == 2
    monkeypatch.undo()

    # refresh: the named stage computes again (both of its runs: first and retrained model), the rest is cached.
    refreshed = semi_supervised(run_dir=str(run_dir), **TINY, refresh=["evaluate"], return_state=True)
    assert refreshed.result()["rank1_after_largest"] == summary["rank1_after_largest"]
    states = task_states(refreshed.state_details.flow_run_id)
    assert states["evaluate"] == ["Completed", "Completed"]
    assert {s for name, runs in states.items() if name != "evaluate" for s in runs} == {"Cached"}

    # Two-head retraining on the ground-truth merge (the tiny clustering may keep a single pseudo class,
    # and a head needs two): the first model and data come from the cache, the retraining runs.
    fourth = semi_supervised(run_dir=str(run_dir), **TINY, labels="ground_truth",
                             retrain_options={"heads": "multi"}, return_state=True)
    upper = fourth.result()
    states = task_states(fourth.state_details.flow_run_id)
    assert set(states["train-backbone"]) == {"Cached"} and states["retrain"] == ["Completed"]
    retrained = max((run_dir / "stages").glob("retrain-*/**/model.pt"), key=lambda p: p.stat().st_mtime_ns)
    payload = torch.load(retrained, map_location="cpu", weights_only=True)
    assert list(payload["head_classes"]) == [6, upper["n_pseudo_classes"]]
    assert set(payload["margin"]) == {"labelled.weight", "pseudo.weight"}


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ({"method": "no_such_method"}, ParameterTypeError, "method"),  # a Method Literal
        ({"method": "knn_uf", "method_params": {"d_model": 64}}, ConfigError, "'knn_uf': unknown parameter.s. d_model"),
        ({"ratio": 0.0}, ConfigError, "r_U/L must be > 0"),
        ({"ratio": -2.0}, ConfigError, "r_U/L must be > 0"),
        ({"data_source": "folder", "data_path": "/nonexistent/faces", "data_options": {}}, DataError, "/nonexistent/faces"),
        ({"data_source": "recordio", "data_path": None, "data_options": {}}, ConfigError,
         "data_path: required for data_source='recordio': .* or set the Prefect variable 'ms1m_path'"),
        ({"train_options": {"batch_sise": 8}}, ParameterTypeError, "batch_sise"),  # the TrainOptions model
        ({"refresh": ["trian_backbone"]}, ParameterTypeError, "refresh"),  # a StageName Literal
        ({"stage_timeouts": {"retrian": 2.0}}, ParameterTypeError, "stage_timeouts"),
        ({"stage_timeouts": {"retrain": 0.0}}, ConfigError, "stage_timeouts: hours > 0"),
        ({"device": "gpu"}, ParameterTypeError, "device"),
        ({"train_options": {"margin": "softmax"}}, ParameterTypeError, "margin"),
        ({"clusterer_holdout": 0.9}, ConfigError, "clusterer_holdout=0.9: 5 of 6 labelled identities"),
        ({"train_options": {"batch_size": 8, "nproc_per_node": 3}}, ConfigError, "nproc_per_node: .* got 3"),
        ({"cluster_features": "arcface"}, ParameterTypeError, "cluster_features"),  # Prefect checks the Literal
        ({"retrain_options": {"head_init": "class_means"}, "retrain_from": "scratch"}, ConfigError,
         "head_init='class_means' .* needs retrain_from='first_model'"),
        ({"train_options": {"head_init": "class_means"}}, ConfigError, "first training starts from scratch"),
    ],
)
def test_bad_parameters_fail_at_the_start_with_nothing_written(prefect_server, tmp_path, override, error, message):
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=message.replace("(", r"\(")):
        semi_supervised(run_dir=str(run_dir), **{**TINY, **override})
    assert not run_dir.exists()


def test_an_empty_data_path_reads_the_variable_when_the_run_starts(prefect_server, tmp_path):
    from prefect.variables import Variable

    from flows.semi_supervised import runtime_data_path

    assert runtime_data_path("demo", None) is None and runtime_data_path("recordio", "/given") == "/given"
    Variable.set("ms1m_path", str(tmp_path / "emore"), overwrite=True)
    try:
        assert runtime_data_path("recordio", None) == str(tmp_path / "emore")
        with pytest.raises(DataError, match="emore: not found"):  # read, then checked like a given path
            semi_supervised(run_dir=str(tmp_path / "run"), **{**TINY, "data_source": "recordio", "data_path": None,
                                                               "data_options": {}})
    finally:
        Variable.unset("ms1m_path")


def test_clusters_can_come_from_the_pretrained_dlib_embedder(prefect_server, tmp_path):
    """cluster_features='dlib': the clustering stages cluster dlib's 128-d descriptors; the backbone is still
    trained, evaluated and retrained (the synthetic faces have no face dlib detects: centred boxes, counted)."""
    pytest.importorskip("dlib")
    run_dir = tmp_path / "run"
    summary = semi_supervised(run_dir=str(run_dir), cluster_features="dlib", label="dlib", **TINY)
    embedded = list((run_dir / "stages").glob("embed_dlib-*/**/features.npy"))
    assert len(embedded) == 1
    features = np.load(embedded[0])
    assert features.shape[1] == 128 and np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-4)
    record = json.loads(next((run_dir / "stages").glob("embed_dlib-*/**/done.json")).read_text())
    assert record["summary"]["no_face"] == record["summary"]["rows"] == len(features)
    assert summary["pairwise_f"] is not None and "rank1_after" in summary


def test_clusterer_holdout_keeps_identities_from_the_first_backbone_for_the_clusterer(prefect_server, tmp_path):
    """clusterer_holdout: the first backbone trains on the other labelled identities, the clusterer's
    labelled kNN holds only the held-out ones, and the lower bound is retrained on every labelled identity."""
    run_dir = tmp_path / "run"
    common = {**TINY, "data_options": {**TINY["data_options"], "n_labelled_ids": 8}, "clusterer_holdout": 0.25}
    lower = semi_supervised(run_dir=str(run_dir), labels="labelled_only", label="lower", **common)
    ratio = semi_supervised(run_dir=str(run_dir), labels="clusters", label="ratio", **common)
    stages = run_dir / "stages"

    def summary_of(stage: str) -> list[dict]:
        return [json.loads(p.read_text())["summary"] for p in stages.glob(f"{stage}-*/**/done.json")]

    first = summary_of("train_backbone")
    assert len(first) == 1 and first[0]["num_classes"] == 6  # 8 labelled identities, 2 held out
    knn = [s for s in summary_of("build_knn") if s["subset"] == "labelled"]
    assert len(knn) == 1 and knn[0]["nodes"] == 2 * 4  # their 4 images each
    assert sorted(s["num_classes"] for s in summary_of("retrain")) == [8, 8 + ratio["n_pseudo_classes"]]
    assert lower["retrained"] and lower["rank1_after"] != lower["rank1_before"]
    # clusterer_density_match: r_U/L 1 samples 32 of the 40 pool images, so the clusterer is fitted on
    # 80 % of the 8 held-out rows; the first backbone and its features are reused
    semi_supervised(run_dir=str(run_dir), labels="clusters", label="matched", clusterer_density_match=True, **common)
    assert sorted(s["rows"] for s in summary_of("train_clusterer")) == [6, 8]
    assert len(summary_of("train_backbone")) == 1


def test_compare_ratios_takes_every_run_parameter_unset_by_default_and_both_forms_describe_them() -> None:
    """compare-ratios shows semi_supervised's parameters (one list, shared by signature) in Prefect's schema,
    each optional with None (not set) as its default; every field of both forms has a description."""
    import inspect

    from prefect.utilities.callables import parameter_schema

    from flows.compare_ratios import RUN_PARAMETERS, compare_ratios
    from flows.semi_supervised import semi_supervised

    run = inspect.signature(semi_supervised.fn, eval_str=True).parameters
    sweep = inspect.signature(compare_ratios.fn).parameters
    assert set(RUN_PARAMETERS) == set(run) - {"ratio", "labels", "label"}
    for name in RUN_PARAMETERS:
        assert sweep[name].annotation == run[name].annotation | None and sweep[name].default is None, name
    schema = parameter_schema(compare_ratios)
    assert set(RUN_PARAMETERS) | {"ratios", "include_bounds", "max_parallel", "deployment"} == set(schema.properties)
    assert schema.properties["data_source"]["anyOf"][0]["enum"] == ["demo", "folder", "recordio", "features"]
    assert "runs/compare-ratios" in schema.properties["run_dir"]["description"]
    assert "else 80" in schema.properties["k"]["description"]
    for flow in (semi_supervised, compare_ratios):
        properties = parameter_schema(flow).properties
        assert all(p.get("description") for p in properties.values()), [n for n, p in properties.items()
                                                                         if not p.get("description")]
    assert parameter_schema(semi_supervised).properties["k"]["description"].startswith("neighbours in the kNN graphs")


def test_a_failed_sweep_run_is_reported_in_the_table_not_fatal(prefect_server, tmp_path, monkeypatch):
    from flows.compare_ratios import compare_ratios

    monkeypatch.setenv(FAULT_ENV, "cluster:1")  # only the r_U/L run clusters: it fails, the bounds complete
    run_dir = tmp_path / "sweep"
    summary = compare_ratios(ratios=[1.0], max_parallel=2, run_dir=str(run_dir), **TINY)
    rows = {row["run"]: row for row in summary["rows"]}
    assert rows["ratio-1"]["status"].startswith("failed: cluster: injected fault")
    assert rows["ratio-1"]["rank1"] is None and rows["ratio-1"]["r_U/L"] == 1.0
    assert rows["lower-bound"]["status"] == rows["upper-bound"]["status"] == "completed"
    # The method is in the labels and the comparison folder: a sweep of another method keeps its own.
    assert {p.name for p in run_dir.glob("*.json")} == {"knn_uf-lower-bound.json", "knn_uf-upper-bound.json"}
    assert "failed: cluster" in (run_dir / "compare-knn_uf" / "comparison.md").read_text()
    assert (run_dir / "compare-knn_uf" / "rank1_vs_ratio.png").is_file()
    assert summary["code_version"] == code_version()

    # Artifact keys carry the experiment (the run folder): another experiment's never replace these.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.common import experiment_name

    experiment = experiment_name(run_dir)
    assert experiment.startswith("sweep-") and experiment != experiment_name(tmp_path / "other" / "sweep")
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=experiment)), limit=200)}
    assert {f"{experiment}-compare-knn-uf", f"{experiment}-knn-uf-lower-bound-verdict",
            f"{experiment}-knn-uf-upper-bound-verdict"} <= keys, keys

    # A hold-out too large for the labelled identities fails the sweep before any run starts.
    with pytest.raises(ConfigError, match="clusterer_holdout=0.8: 5 of 6 labelled identities"):
        compare_ratios(ratios=[1.0], run_dir=str(tmp_path / "refused"), clusterer_holdout=0.8, **TINY)
    assert not (tmp_path / "refused").exists()


def test_the_train_task_launches_torchrun_and_alone_holds_the_stage(prefect_server, tmp_path):
    """nproc_per_node=2: two gloo ranks train in a child torchrun of the task; the task writes the stage
    record (the ranks never touch the cache), torchrun's per-rank folders are in the stage folder (not
    left in the system's temp folder), and a rerun finds the stage cached."""
    run_dir = tmp_path / "run"
    params = {**TINY, "labels": "labelled_only", "train_options": {"batch_size": 8, "nproc_per_node": 2}}
    first = semi_supervised(run_dir=str(run_dir), **params, return_state=True)
    summary = first.result()
    assert 0.0 <= summary["rank1_before_largest"] <= 1.0
    (done,) = (run_dir / "stages").glob("train_backbone-*/done.json")
    assert (done.parent / "train" / "model.pt").is_file()
    assert "trained by 2 processes (DDP)" in (done.parent / "train_torchrun.log").read_text()
    assert sorted(p.name for p in (done.parent / "train_torchrun_logs").glob("*/attempt_0/*")) == ["0", "1"]
    second = semi_supervised(run_dir=str(run_dir), **params, return_state=True)
    assert second.result()["rank1_before_largest"] == summary["rank1_before_largest"]
    assert task_states(second.state_details.flow_run_id)["train-backbone"] == ["Cached"]


def test_eval_set_in_the_megaface_layout_replaces_the_split_and_follows_a_moved_data_set(prefect_server, tmp_path,
                                                                                         face_folders):
    """eval_set: both models are scored on FaceScrub-style probes against a distractor folder (extracted with
    each model), and the folder source needs no probe / distractor share of its own. Moved elsewhere, the
    data is read from its new place although the manifests come from the cache."""
    import shutil

    faces, probes, distractors = face_folders
    run_dir = tmp_path / "run"
    params = {**TINY, "data_source": "folder", "data_options": {"labelled": 0.6, "unlabelled": 0.4},
              "labels": "labelled_only", "distractor_sizes": [5, 20]}
    summary = semi_supervised(run_dir=str(run_dir), data_path=str(faces), **params,
                              eval_set={"probes": str(probes), "distractors": str(distractors)})
    results = json.loads(Path(summary["results_before"]).read_text())
    assert results["inputs"]["n_probe_rows"] == 12 and results["inputs"]["n_distractor_rows"] == 20
    assert "prepare_eval" in results["inputs"]["manifest"] and not results["notes"]  # no identity overlap
    assert sorted(summary["rank1_before"]) == ["20", "5"] and summary["n_labelled"] == 6 * 4

    moved = Path(shutil.move(str(tmp_path / "data"), str(tmp_path / "mounted-elsewhere")))
    again = semi_supervised(
        run_dir=str(run_dir), data_path=str(moved / "faces"), refresh=["train_backbone", "extract_features"],
        eval_set={"probes": str(moved / "facescrub"), "distractors": str(moved / "megaface" / "FlickrFinal2")},
        **params, return_state=True)
    assert again.result()["rank1_before"] == summary["rank1_before"]  # the same images, read from the new place
    states = task_states(again.state_details.flow_run_id)
    assert states["prepare-data"] == states["prepare-eval-set"] == ["Cached"]

    noise = tmp_path / "megaface_noises.txt"  # the cleaned protocol: 5 distractors and one probe image dropped
    distractor_paths = sorted(p.relative_to(moved / "megaface" / "FlickrFinal2").as_posix()
                              for p in (moved / "megaface" / "FlickrFinal2").rglob("*.png"))
    probe_image = sorted((moved / "facescrub").rglob("*.png"))[0]
    noise.write_text("\n".join(distractor_paths[:5]) + "\n")
    (tmp_path / "facescrub_noises.txt").write_text(probe_image.relative_to(moved / "facescrub").as_posix() + "\n")
    cleaned = semi_supervised(  # 15 distractors left: a size of 20 would now be refused, not capped
        run_dir=str(run_dir), data_path=str(moved / "faces"), **{**params, "distractor_sizes": [5, 15]},
        return_state=True,
        eval_set={"probes": str(moved / "facescrub"), "distractors": str(moved / "megaface" / "FlickrFinal2"),
                  "distractor_noise": str(noise), "probe_noise": str(tmp_path / "facescrub_noises.txt")})
    results = json.loads(Path(cleaned.result()["results_before"]).read_text())
    assert results["inputs"]["n_probe_rows"] == 11 and results["inputs"]["n_distractor_rows"] == 15
    assert results["inputs"]["noise_removed"] == {"probe": 1, "distractor": 5}
    assert task_states(cleaned.state_details.flow_run_id)["prepare-eval-set"] == ["Completed"]
    with pytest.raises(ParameterTypeError, match="eval_set.distractor: Extra inputs"):  # the EvalSet model
        semi_supervised(run_dir=str(run_dir), data_path=str(moved / "faces"), eval_set={"probes": "p", "distractor": "x"},
                        **params)
    with pytest.raises(ConfigError, match="probe and distractor shares are 0 and no eval_set"):
        semi_supervised(run_dir=str(run_dir), data_path=str(moved / "faces"), **{
            **params, "data_options": {**params["data_options"], "probe": 0, "distractor": 0}})
