"""What every stage task shares: no Prefect cache, a timeout of its own, no retry of a deterministic error,
and a training under torchrun that stops with its task."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from prefect.states import Failed

from semiface.errors import ConfigError, DataError


def test_only_failures_that_may_pass_are_retried() -> None:
    from tasks.common import InjectedFault, retry_transient, stage_name
    from tasks.train_backbone import train_backbone_task

    retried = {type(e).__name__: retry_transient(train_backbone_task, None, Failed(data=e))
               for e in (ConfigError("x"), DataError("f", "bad"), RuntimeError("NCCL timeout"), OSError("stale handle"),
                         TimeoutError("took too long"), InjectedFault("transient"))}
    assert retried == {"ConfigError": False, "DataError": False, "RuntimeError": True, "OSError": True,
                       "TimeoutError": True, "InjectedFault": True}
    assert stage_name(train_backbone_task) == "train_backbone"


def test_every_stage_task_skips_prefects_cache_and_has_a_timeout_of_its_own() -> None:
    import importlib

    from prefect.cache_policies import NO_CACHE

    from flows.semi_supervised import STAGES
    from tasks.common import STAGE_TIMEOUT_HOURS, retry_transient, stage_name

    assert set(STAGE_TIMEOUT_HOURS) == set(STAGES)
    for stage in STAGES:
        module = importlib.import_module(f"tasks.{stage}")
        (task,) = [t for _, t in inspect.getmembers(module) if getattr(t, "fn", None) and t.fn.__module__ == module.__name__]
        assert stage_name(task) == stage
        assert task.cache_policy is NO_CACHE and task.retry_condition_fn is retry_transient
        assert task.timeout_seconds == STAGE_TIMEOUT_HOURS[stage] * 3600
    assert STAGE_TIMEOUT_HOURS["train_backbone"] >= 48 and STAGE_TIMEOUT_HOURS["retrain"] >= 48  # days, for MS1M


def test_a_stopped_torchrun_training_stops_its_ranks(monkeypatch, tmp_path) -> None:
    """A task stopped while its torchrun trains (a timeout raises in it) leaves no training running."""
    import tasks.torchrun as torchrun
    from backbone.train_config import TrainConfig

    started = []

    def sleeping_ranks(*args, **kwargs) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(600)"]

    def stopped(*args, **kwargs) -> int:
        started.append(1)
        raise TimeoutError("the task's timeout")  # as Prefect's alarm raises it, in the task's loop

    real_popen = subprocess.Popen
    processes = []

    def popen(*args, **kwargs):
        processes.append(real_popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(torchrun, "torchrun_command", sleeping_ranks)
    monkeypatch.setattr(torchrun, "_report_epochs", stopped)
    monkeypatch.setattr(torchrun.subprocess, "Popen", popen)
    with pytest.raises(TimeoutError):
        torchrun.train_with_torchrun(2, tmp_path / "m.parquet", None, tmp_path / "train", TrainConfig(epochs=1))
    assert started == [1] and processes[0].poll() is not None  # stopped, not left training
