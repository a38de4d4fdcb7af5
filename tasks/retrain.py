"""Stage 8, retrain the backbone on labelled + pseudo-labelled rows (the merge stage's manifest),
with one margin head over both or, with ``heads="multi"`` in the retraining settings, one head each."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.common import StageContext, stage_options
from tasks.stage_cache import StageResult
from tasks.train_backbone import CODE, run_training


@task(name="retrain", task_run_name="retrain[{ctx.label}]", tags=["stage", "backbone", "gpu"],
      retries=1, retry_delay_seconds=10, **stage_options("retrain"))
def retrain_task(
    ctx: StageContext,
    data: StageResult,
    merged: StageResult,
    train: dict[str, Any],
    init: StageResult | None = None,
) -> StageResult:
    """Train on ``merged``'s retraining manifest; ``init`` (the first model) starts the trunk, else scratch.

    Classes are the labelled ones plus the pseudo classes offset past them; each row's loss is
    weighted by its ``weight`` column (cluster confidence for pseudo rows).
    """
    return run_training(ctx, "retrain", data, train, merged, init, ("tasks.retrain", *CODE))
