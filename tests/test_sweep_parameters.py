"""What a sweep sends its runs, where a deployment's runs write, the checks made before any run starts,
and the typed parameter models (no Prefect server needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flows.deployments import DeploymentTarget, working_directory
from semiface.errors import ConfigError, DataError

SET_DIR = "prefect.deployments.steps.set_working_directory"
DEMO = {"method": "clusformer", "method_params": {"d_model": 64}, "k": 31, "min_confidence": 0.4,
        "run_dir": "runs/demo-deployment"}


def test_a_deployments_run_folder_is_resolved_as_its_worker_resolves_it(tmp_path) -> None:
    assert working_directory([{SET_DIR: {"directory": "/srv/semiface"}}], None) == Path("/srv/semiface")
    assert working_directory([{SET_DIR: {"directory": "repo"}}], "/jobs") == Path("/jobs/repo")
    assert working_directory([{SET_DIR: {"directory": "repo"}}], None) is None  # a temporary folder
    assert working_directory([{SET_DIR: {"directory": "{{ clone.directory }}"}}], "/jobs") is None
    assert working_directory([{"prefect.deployments.steps.git_clone": {"repository": "x"}}], "/jobs") is None
    assert working_directory([], "/jobs") is None  # the worker runs wherever it finds the code

    target = DeploymentTarget("semi-supervised/demo", DEMO, Path("/srv/semiface"))
    assert target.run_dir("runs/semi-supervised") == Path("/srv/semiface/runs/demo-deployment")
    assert DeploymentTarget("x/y", {}, Path("/srv")).run_dir("runs/semi-supervised") == Path("/srv/runs/semi-supervised")
    assert DeploymentTarget("x/y", {"run_dir": "/data/runs"}, None).run_dir("r") == Path("/data/runs")
    with pytest.raises(ConfigError, match="run_dir: deployment 'x/y' keeps its run folder 'runs/a' relative .* pass run_dir"):
        DeploymentTarget("x/y", {"run_dir": "runs/a"}, None).run_dir("r")


def test_a_sweep_sends_exactly_what_was_set_and_a_new_method_without_its_parameters_gets_its_defaults(
        monkeypatch, tmp_path) -> None:
    import flows.compare_ratios as sweep

    unset = dict.fromkeys(sweep.RUN_PARAMETERS)
    # Nested: what was set (a value equal to semi-supervised's default included), run_dir the sweep's default.
    sent, effective = sweep.sweep_parameters({**unset, "k": 80, "method": "knn_uf"}, None)
    assert sent == {"k": 80, "method": "knn_uf", "method_params": {}, "run_dir": sweep.SWEEP_RUN_DIR}
    assert effective["epochs"] == 20 and effective["k"] == 80

    # On a deployment: its run folder made absolute; its parameters hold for what was not set.
    monkeypatch.setattr(sweep, "read_deployment", lambda name: DeploymentTarget(name, DEMO, tmp_path / "repo"))
    sent, effective = sweep.sweep_parameters({**unset, "method": "knn_uf", "min_confidence": 0.0}, "semi-supervised/demo")
    assert sent == {"method": "knn_uf", "method_params": {}, "min_confidence": 0.0,
                    "run_dir": str(tmp_path / "repo" / "runs" / "demo-deployment")}
    assert effective["k"] == 31 and effective["method_params"] == {} and effective["min_confidence"] == 0.0
    sent, effective = sweep.sweep_parameters({**unset, "method": "clusformer"}, "semi-supervised/demo")
    assert "method_params" not in sent and effective["method_params"] == {"d_model": 64}  # the same method: its own
    sent, _ = sweep.sweep_parameters({**unset, "run_dir": "relative/sweep"}, "semi-supervised/demo")
    assert sent == {"run_dir": str(Path("relative/sweep").resolve())}  # the caller's, absolute for the workers

    # The option models go as the fields that were set.
    from flows.parameters import TrainOptions

    sent, _ = sweep.sweep_parameters({**unset, "train_options": TrainOptions(batch_size=8)}, None)
    assert sent["train_options"] == {"batch_size": 8}


def test_the_checks_of_every_run_are_made_before_a_sweep_starts_one(face_folders, tmp_path) -> None:
    """run_settings (what a run checks first, and a sweep for each of its runs before starting any) counts the
    labelled identities a hold-out splits from the source's description, before anything is read."""
    from prefect.exceptions import ParameterTypeError

    from flows.compare_ratios import RUN_DEFAULTS, check_runs
    from flows.semi_supervised import run_settings
    from tasks.prepare_data import labelled_identities

    faces, _, _ = face_folders  # 10 people: 4 labelled at these shares
    params = {**RUN_DEFAULTS, "data_source": "folder", "data_path": str(faces), "method": "knn_uf",
              "data_options": {"labelled": 0.4, "unlabelled": 0.2, "probe": 0.2, "distractor": 0.2}}
    assert run_settings(**{**params, "clusterer_holdout": 0.5}).data_options["labelled"] == 0.4  # 2 and 2
    with pytest.raises(ConfigError, match="clusterer_holdout=0.75: 3 of 4 labelled identities"):
        run_settings(**{**params, "clusterer_holdout": 0.75})
    demo = {**RUN_DEFAULTS, "method": "knn_uf", "data_options": {"n_labelled_ids": 8}, "clusterer_holdout": 0.3}
    check_runs(demo, [{"labels": "labelled_only"}, {"labels": "clusters", "ratio": 3.0}], None)
    with pytest.raises(ConfigError, match="clusterer_holdout=0.9: 7 of 8"):
        check_runs({**demo, "clusterer_holdout": 0.9}, [{"labels": "labelled_only"}], None)
    with pytest.raises(ParameterTypeError, match="k"):  # a deployment's stored parameters are type-checked too
        check_runs({**demo, "k": "many"}, [{"labels": "clusters"}], "semi-supervised/demo")

    # Inputs this machine does not see are checked where the runs execute (a deployment's workers).
    elsewhere = {**params, "data_path": str(tmp_path / "on-the-workers"), "clusterer_holdout": 0.75}
    run_settings(**elsewhere, here=False)
    with pytest.raises(DataError, match="on-the-workers: not found"):
        run_settings(**elsewhere)

    record = tmp_path / "emore"
    record.mkdir()
    for name in ("train.rec", "train.idx"):
        (record / name).write_bytes(b"")
    assert labelled_identities("recordio", str(record), {"labelled": 0.1}) is None  # no property file
    (record / "property").write_text("85742,112,112\n")
    assert labelled_identities("recordio", str(record), {"labelled": 0.1}) == 8574
    assert labelled_identities("recordio", str(record), {"labelled": 0.1, "max_identities": 100}) == 10


def test_the_parameter_models_follow_the_library_and_accept_plain_dicts() -> None:
    from typing import get_args

    from backbone.data.demo_faces import DemoConfig
    from backbone.train_config import TrainConfig
    from clustering.base import available_methods, make_method
    from flows.parameters import DataOptions, EvalSet, TrainOptions, as_options
    from flows.preflight import FROM_VARIABLES
    from flows.semi_supervised import Method
    from tasks.prepare_data import FEATURE_OPTIONS, SPLIT_OPTIONS
    from tasks.prepare_eval import EVAL_SET_KEYS
    from tasks.train_backbone import TASK_OWNED

    assert set(TrainOptions.model_fields) == {f.name for f in dataclasses.fields(TrainConfig)} - TASK_OWNED | {
        "nproc_per_node"}
    assert set(DataOptions.model_fields) == {f.name for f in dataclasses.fields(DemoConfig)} | set(SPLIT_OPTIONS) | set(
        FEATURE_OPTIONS)
    assert tuple(EvalSet.model_fields) == (*EVAL_SET_KEYS, FROM_VARIABLES)
    infomap = []
    for name in available_methods():
        try:
            make_method(f"{name}+infomap")
            infomap.append(f"{name}+infomap")
        except (ConfigError, TypeError, ValueError):
            pass
    assert set(get_args(Method)) == set(available_methods()) | set(infomap)

    ms1m = {"batch_size": 512, "optimizer": "sgd", "lr": 0.1, "margin": "arcface", "s": 64.0, "m": 0.5}
    assert as_options(TrainOptions.model_validate(ms1m)) == ms1m
    assert as_options(DataOptions.model_validate({"labelled": 0.1, "verify": False, "max_identities": None})) == {
        "labelled": 0.1, "verify": False}
    assert as_options(EvalSet(probes="p", distractors="d")) == {"probes": "p", "distractors": "d"}
    assert as_options(EvalSet(from_variables="megaface")) == {FROM_VARIABLES: "megaface"}
    for mixed in ({"from_variables": "megaface", "probes": "p"}, {"probes": "p"}):
        with pytest.raises(ValueError):
            EvalSet(**mixed)
    assert as_options(None) is None
