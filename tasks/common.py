"""What every stage task shares: the run context, the cached execution, artifacts, retries and timeouts,
fault injection.

A stage task builds a ``StageSpec`` (parameters, upstream results, external inputs, code paths)
and a ``compute(stage_dir)`` function, then calls ``execute``: a cache hit returns a Prefect
``Completed`` state named ``Cached`` (so the dashboard and the flow see "skipped"), a miss
computes and returns the ``StageResult``. Flows read either through ``result_of``.

Every stage task is declared with ``stage_options(stage)``: no Prefect cache (the stage cache is the
project's own, in the run folder: Prefect's default policy would key on the task's inputs and could
return a stale result without looking at the files), no retry of an error that the same inputs raise
again (``retry_transient``), and a timeout per stage (``STAGE_TIMEOUT_HOURS``; a run overrides them
through ``StageContext.timeouts``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Task, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, State

from semiface.errors import SemifaceError
from tasks.stage_cache import StageResult, StageSpec, StageStore

FAULT_ENV = "SEMIFACE_INJECT_FAULT"
# Embed plots in markdown artifacts (as data URIs) up to this size; larger ones are linked by path only.
MAX_EMBEDDED_PNG = 400_000


# Each stage's timeout in hours: ceilings sized for the MS1M job on one GPU (5.8M images, ResNet50 at
# 112 px, up to 8 x the labelled images retrained on; at 1,000 img/s, a slow GPU, a 20-epoch training
# of 5.2M images takes 29 h), not estimates of the time a stage takes. A stage that runs past its own
# fails with Prefect's TimedOut state and, like any failure that is not deterministic, is retried once
# where its task retries (training resumes from its last epoch). A run sets others with the flow
# parameter ``stage_timeouts`` (hours by stage name; null: none).
STAGE_TIMEOUT_HOURS: dict[str, float] = {
    "prepare_data": 12.0,  # a folder source decodes every image once
    "prepare_eval": 12.0,  # the same for a million MegaFace distractors
    "align_eval": 48.0,  # dlib's landmarks on the CPU, for a million distractors if they are not aligned
    "train_backbone": 72.0,
    "extract_features": 12.0,  # every image of the data and of the evaluation set
    "embed_dlib": 72.0,  # dlib's descriptor runs on the CPU
    "evaluate": 12.0,
    "build_knn": 12.0,
    "train_clusterer": 48.0,
    "cluster": 24.0,
    "merge_pseudo_labels": 2.0,
    "retrain": 72.0,
}


# The library packages whose log records (and Python warnings, through "py.warnings") belong in the
# flow-run logs of the Prefect server, beside the tasks' own.
LIBRARY_LOGGERS = ("backbone", "clustering", "recognition_eval", "semiface", "py.warnings")


def route_library_logs() -> None:
    """Send the library loggers and Python warnings to the Prefect API (the dashboard's run logs).

    What ``PREFECT_LOGGING_EXTRA_LOGGERS`` does, but at run time: a worker has set its logging up
    before it loads the flow, so the setting would have to be in its environment. Idempotent.
    """
    logging.captureWarnings(False)  # hook again even if warnings.showwarning was replaced since the last call
    logging.captureWarnings(True)
    api_handlers = logging.getLogger("prefect.extra").handlers
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        for handler in api_handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)


class InjectedFault(SemifaceError, RuntimeError):
    """Raised on purpose (``SEMIFACE_INJECT_FAULT``) to test retries and resumption: a transient fault."""


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect's ``retry_condition_fn`` of the stage tasks: retry a failure unless the same inputs would
    raise it again. semiface's own errors (ConfigError, DataError, TrainingError...) say what is wrong
    with the inputs, the parameters or the training; anything else (a lost file system, a CUDA or NCCL
    error, a killed child process, a timeout) may pass. ``InjectedFault`` stands for a transient fault."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(error, SemifaceError) or isinstance(error, InjectedFault)


def stage_options(stage: str) -> dict[str, Any]:
    """The ``@task`` arguments every stage shares (see the module docstring); retries stay per task."""
    return {"cache_policy": NO_CACHE, "retry_condition_fn": retry_transient,
            "timeout_seconds": STAGE_TIMEOUT_HOURS[stage] * 3600}


@dataclass(frozen=True)
class StageContext:
    """Per-run settings every task needs: where the cache lives, how to name artifacts, devices."""

    cache_root: str
    label: str = "run"  # e.g. "ratio-3", "lower-bound": prefixes artifact keys
    experiment: str = "run"  # the run folder's ``experiment_name``: artifact keys of two experiments never meet
    device: str = "auto"
    num_workers: int = 0
    refresh: tuple[str, ...] = ()  # stage names to recompute even when cached
    # stage name -> timeout in hours (None: none) over STAGE_TIMEOUT_HOURS, for this run's stages
    timeouts: Mapping[str, float | None] = field(default_factory=dict)
    # the code that runs (semiface.code_version): recorded in every stage's done.json, never in a key
    code_version: Mapping[str, Any] = field(default_factory=dict)


def execute(
    ctx: StageContext,
    spec: StageSpec,
    compute: Callable[[Path], tuple[Mapping[str, Path], dict[str, Any]]],
    report: Callable[[StageResult], str],
    tables: Callable[[StageResult], Mapping[str, list[dict[str, Any]]]] | None = None,
) -> StageResult | State:
    """Run ``compute`` unless its outputs for ``spec`` exist; publish the stage's artifacts either way.

    ``report(result)`` gives the markdown body; ``tables(result)`` named table artifacts.
    """
    logger = get_run_logger()
    store = StageStore(ctx.cache_root)
    refresh = spec.stage in ctx.refresh
    if ctx.code_version:
        spec = replace(spec, runtime={**spec.runtime, "code_version": dict(ctx.code_version)})

    def guarded(folder: Path) -> tuple[Mapping[str, Path], dict[str, Any]]:
        logger.info("%s: computing in %s", spec.stage, folder)
        maybe_inject_fault(spec.stage, Path(ctx.cache_root))
        return compute(folder)

    result = store.run(spec, guarded, refresh=refresh)
    heading = f"## {spec.stage} ({ctx.label})\n\n"
    if result.cached:
        note = f"skipped: outputs for key {result.key[:16]} already in {result.dir} (computed in {result.seconds:.1f} s)"
        logger.info("%s: %s", spec.stage, note)
        heading += f"*Cached: {note}.*\n\n"
    else:
        logger.info("%s: done in %.1f s -> %s", spec.stage, result.seconds, result.dir)
        heading += f"*Computed in {result.seconds:.1f} s; outputs in `{result.dir}`.*\n\n"
    create_markdown_artifact(heading + report(result), key=artifact_key(ctx.experiment, ctx.label, spec.stage),
                             description=f"{spec.stage} summary")
    for name, rows in (tables(result) if tables else {}).items():
        if rows:
            create_table_artifact(rows, key=artifact_key(ctx.experiment, ctx.label, name), description=name.replace("-", " "))
    if result.cached:
        return Completed(name="Cached", message=note, data=result)
    return result


def result_of(task: Task, ctx: StageContext, *args: Any, **kwargs: Any) -> StageResult:
    """Call a stage task in a flow and return its StageResult whether it computed or was cached.

    The run's own timeout for the stage (``ctx.timeouts``) replaces the task's. Prefect enforces a
    timeout with an alarm signal, which only the main thread receives: a run nested in a sweep's
    worker thread (compare-ratios without a deployment) runs its stages without one, rather than with
    a timeout that could not interrupt a blocking call (Prefect would warn at every stage).
    """
    if threading.current_thread() is not threading.main_thread():
        task = task.with_options(timeout_seconds=None)
    elif stage_name(task) in ctx.timeouts:
        hours = ctx.timeouts[stage_name(task)]
        task = task.with_options(timeout_seconds=None if hours is None else hours * 3600)
    return task(ctx, *args, return_state=True, **kwargs).result()


def stage_name(task: Task) -> str:
    """The stage a stage task runs: the name of its module (``tasks/<stage>.py``)."""
    return task.fn.__module__.rsplit(".", 1)[-1]


def tag_flow_run(tag: str) -> None:
    """Add ``tag`` to the tags of the flow run this is called in (shown, and filterable, in the UI)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=sorted({*flow_run.tags, tag}))


def maybe_inject_fault(stage: str, cache_root: Path) -> None:
    """Fail the first N computations of ``stage`` when ``SEMIFACE_INJECT_FAULT`` says ``stage:N``.

    The count is kept in ``<cache root>/.faults/<stage>`` so it holds across retries and processes.
    Several stages: ``SEMIFACE_INJECT_FAULT=train_backbone:1,evaluate:3``.
    """
    wanted = _fault_plan(os.environ.get(FAULT_ENV, "")).get(stage, 0)
    if wanted <= 0:
        return
    counter = cache_root / ".faults" / stage
    done = int(counter.read_text()) if counter.is_file() else 0
    if done >= wanted:
        return
    counter.parent.mkdir(parents=True, exist_ok=True)
    counter.write_text(str(done + 1))
    raise InjectedFault(f"{stage}: injected fault {done + 1}/{wanted} ({FAULT_ENV})")


def _fault_plan(text: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, _, count = item.partition(":")
        plan[stage] = int(count) if count else 1
    return plan


def experiment_name(run_dir: str | Path) -> str:
    """A short artifact-key prefix naming an experiment by its run folder: the folder's name and a hash
    of its absolute path (``demo-1a2b3c``), so that two experiments' artifacts never share a key."""
    resolved = str(Path(run_dir).resolve())
    return artifact_key(Path(resolved).name or "run", hashlib.sha1(resolved.encode()).hexdigest()[:6])


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())).strip("-")


class Progress:
    """A Prefect progress artifact, updated as work advances (0..100); sent when it moved a point or more."""

    def __init__(self, ctx: StageContext, stage: str, description: str) -> None:
        self._id: UUID = create_progress_artifact(
            0.0, key=artifact_key(ctx.experiment, ctx.label, stage, "progress"), description=description
        )
        self._sent = 0.0

    def update(self, percent: float) -> None:
        percent = min(100.0, max(0.0, float(percent)))
        if percent - self._sent >= 1.0 or (percent == 100.0 and self._sent < 100.0):
            update_progress_artifact(self._id, percent)
            self._sent = percent


def png_markdown(path: str | Path, title: str) -> str:
    """Markdown showing a saved PNG: embedded as a data URI when small, and always its path."""
    path = Path(path)
    if not path.is_file():
        return f"*{title}: plot missing ({path})*\n"
    text = f"**{title}**: `{path}`\n\n"
    data = path.read_bytes()
    if len(data) <= MAX_EMBEDDED_PNG:
        text += f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})\n"
    return text


def summary_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A flat summary as two-column rows (for a markdown table)."""
    return [{"field": k, "value": v} for k, v in summary.items() if not isinstance(v, dict | list)]
