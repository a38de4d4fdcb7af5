"""Stage 3b (``cluster_features="dlib"``): dlib's pretrained descriptors of every manifest row, the
features the clustering stages then use instead of the first backbone's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.common import StageContext, execute, stage_options
from tasks.stage_cache import IMAGE_DIGEST, StageResult, StageSpec


@task(name="embed-dlib", task_run_name="embed-dlib[{ctx.label}]", tags=["stage", "reference"], retries=1,
      retry_delay_seconds=10, **stage_options("embed_dlib"))
def embed_dlib_task(ctx: StageContext, data: StageResult) -> StageResult:
    """features.npy [N, 128] float32 in manifest order; the summary counts images without a detected face."""
    from backbone.dlib_embedder import embed_manifest

    spec = StageSpec("embed_dlib", {}, (data,), code=("tasks.embed_dlib",), reads=(IMAGE_DIGEST,))

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        root, record = data.summary.get("image_root"), data.summary.get("record_file")
        out = folder / "features.npy"
        summary = embed_manifest(data.path("manifest"), Path(root) if root else None, out,
                                 record_file=Path(record) if record else None)
        return {"features": out}, summary

    def report(result: StageResult) -> str:
        s = result.summary
        return (f"{s['rows']} rows x {s['dim']} dims (dlib face descriptor) -> `{result.outputs['features']}`; "
                f"{s['no_face']} images without a detected face were embedded from a centred box\n")

    return execute(ctx, spec, compute, report)
