"""The flows' command lines: --help lists every parameter without importing Prefect; a run calls the flow."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import parse_flow_arguments

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module, function", [("semi_supervised", "semi_supervised"), ("compare_ratios", "compare_ratios")])
def test_help_lists_every_parameter_without_importing_prefect(tmp_path, module, function) -> None:
    blocked = tmp_path / "blocked" / "prefect"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('prefect imported by --help')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{REPO_ROOT}"}
    done = subprocess.run([sys.executable, "-m", f"flows.{module}", "--help"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import importlib

    flow = getattr(importlib.import_module(f"flows.{module}"), function)
    for name in inspect.signature(flow.fn).parameters:
        assert "--" + name.replace("_", "-") in done.stdout, name


def test_arguments_are_typed_by_the_signature() -> None:
    source = REPO_ROOT / "flows" / "semi_supervised.py"
    args = parse_flow_arguments(source, "semi_supervised", [
        "--ratio", "3", "--label", "7", "--data-path", "/data/x", "--train-options", '{"epochs": 2}',
        "--distractor-sizes", "[10, 100]", "--method-params", "null"])
    assert args == {"ratio": 3, "label": "7", "data_path": "/data/x", "train_options": {"epochs": 2},
                    "distractor_sizes": [10, 100], "method_params": None}
    with pytest.raises(SystemExit):
        parse_flow_arguments(source, "semi_supervised", ["--no-such-parameter", "1"])


@pytest.mark.slow
def test_a_run_from_the_command_line(tmp_path) -> None:
    options = {"data_options": {"n_labelled_ids": 4, "n_unlabelled_ids": 4, "n_probe_ids": 3, "n_distractor_ids": 12,
                                "images_per_id": 3},
               "labels": "labelled_only", "backbone": "test_resnet", "image_size": 32, "epochs": 1,
               "train_options": {"batch_size": 6}, "distractor_sizes": [12], "device": "cpu", "num_workers": 0,
               "run_dir": str(tmp_path / "run")}
    argv = [a for k, v in options.items() for a in ("--" + k.replace("_", "-"), v if isinstance(v, str) else json.dumps(v))]
    done = subprocess.run([sys.executable, "-m", "flows.semi_supervised", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["labels"] == "labelled_only"
