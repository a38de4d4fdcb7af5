"""Stage 3, extract L2-normalised features of every manifest row with a trained backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.common import Progress, StageContext, execute, stage_options
from tasks.stage_cache import IMAGE_DIGEST, StageResult, StageSpec


@task(name="extract-features", task_run_name="extract-features[{ctx.label}/{model.stage}]",
      tags=["stage", "backbone", "gpu"], retries=1, retry_delay_seconds=10, **stage_options("extract_features"))
def extract_features_task(ctx: StageContext, data: StageResult, model: StageResult, batch_size: int) -> StageResult:
    """features.npy [N, D] float32, rows in manifest order (labelled, unlabelled, probe, distractor)."""
    from backbone.extract import extract_features

    spec = StageSpec("extract_features", {"batch_size": batch_size}, (data, model),
                     code=("tasks.extract_features",), reads=(IMAGE_DIGEST,),
                     runtime={"device": ctx.device, "num_workers": ctx.num_workers})

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        root, record = data.summary.get("image_root"), data.summary.get("record_file")
        progress = Progress(ctx, f"extract-{model.stage}", f"extracting features with the {model.stage} model")
        out = extract_features(model.path("model"), data.path("manifest"), Path(root) if root else None,
                               folder / "features.npy", batch_size=batch_size, device=ctx.device,
                               num_workers=ctx.num_workers, record_file=Path(record) if record else None,
                               progress=progress.update)
        features = np.load(out, mmap_mode="r")
        return {"features": out}, {"rows": int(features.shape[0]), "dim": int(features.shape[1]),
                                   "model": str(model.path("model"))}

    def report(result: StageResult) -> str:
        s = result.summary
        return f"{s['rows']} rows x {s['dim']} dims from `{s['model']}` -> `{result.outputs['features']}`\n"

    return execute(ctx, spec, compute, report)
