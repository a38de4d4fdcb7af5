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
    env = {**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{REPO_ROOT}", "COLUMNS": "2000"}
    done = subprocess.run([sys.executable, "-m", f"flows.{module}", "--help"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import importlib

    flow = getattr(importlib.import_module(f"flows.{module}"), function)
    options: dict[str, str] = {}  # option -> its help entry on one line (a long option's text starts below it)
    for line in done.stdout.split("options:", 1)[1].splitlines():
        if line.startswith("  --"):
            current = line.split()[0].rstrip(",")
            options[current] = line.rstrip()
        elif line.strip() and options:
            options[current] += " " + line.strip()
    for name in inspect.signature(flow.fn).parameters:
        assert "--" + name.replace("_", "-") in options, name
    # Each option: its description (the docstring's Args:), its choices, the default it really takes.
    assert "neighbours in the kNN graphs" in options["--k"]
    assert "{auto,cpu,cuda,cuda:0" in options["--device"] and "facet+infomap" in options["--method"]
    assert options["--clusterer-density-match"].startswith("  --clusterer-density-match, --no-clusterer-density-match")
    if module == "semi_supervised":
        assert options["--k"].endswith("[default: 80]")
        assert options["--distractor-sizes"].endswith("[default: [10, 100, 1000, 10000, 100000, 1000000]]")
        assert options["--run-dir"].endswith("[default: runs/semi-supervised]")
    else:
        assert options["--k"].endswith("[default: not set: the deployment's value, else 80]")
        assert options["--run-dir"].endswith(
            "[default: not set: runs/compare-ratios; with deployment, the deployment's run folder (absolute)]")
        assert options["--ratios"].endswith("[default: [1.0, 3.0, 5.0]]")


def test_arguments_are_typed_by_the_signature(capsys) -> None:
    source = REPO_ROOT / "flows" / "semi_supervised.py"
    args = parse_flow_arguments(source, "semi_supervised", [
        "--ratio", "3", "--label", "7", "--data-path", "/data/x", "--train-options", '{"epochs": 2}',
        "--distractor-sizes", "[10, 100]", "--method-params", "null", "--method", "knn_uf",
        "--clusterer-density-match", "--refresh", '["evaluate"]'])
    assert args == {"ratio": 3.0, "label": "7", "data_path": "/data/x", "train_options": {"epochs": 2},
                    "distractor_sizes": [10, 100], "method_params": None, "method": "knn_uf",
                    "clusterer_density_match": True, "refresh": ["evaluate"]}
    assert parse_flow_arguments(source, "semi_supervised", ["--no-clusterer-density-match"]) == {
        "clusterer_density_match": False}
    for argv, message in [
        (["--no-such-parameter", "1"], "unrecognized arguments: --no-such-parameter"),
        (["--train-options", '{"epochs": 2'], "argument --train-options: not valid JSON"),  # not a string
        (["--train-options", "[2]"], "argument --train-options: expected a JSON object"),
        (["--distractor-sizes", "10"], "argument --distractor-sizes: expected a JSON array"),
        (["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
        (["--k", "8.5"], "argument --k: invalid int value"),
        (["--clusterer-density-match", "true"], "unrecognized arguments: true"),
    ]:
        with pytest.raises(SystemExit):
            parse_flow_arguments(source, "semi_supervised", argv)
        assert message in capsys.readouterr().err, argv


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
