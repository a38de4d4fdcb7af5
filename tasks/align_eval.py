"""Stage 1c, the evaluation set aligned: each image's five dlib landmarks warped onto the ArcFace 112x112
template (``recognition_eval.face_align``), when a sample of its images shows they are not aligned crops at the
model's ``image_size``; without the ``reference`` extra such a set is refused, saying how to align it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from semiface.atomic import atomic_open
from semiface.errors import ConfigError
from semiface.manifest import write_manifest
from semiface.markdown import markdown_table
from tasks.common import Progress, StageContext, execute, result_of, stage_options
from tasks.stage_cache import IMAGE_DIGEST, StageResult, StageSpec, StageStore

# How many images of each set (probes, distractors) are checked for the aligned size, headers only.
ALIGNED_SAMPLE = 64
ALIGNED_FOLDER = "images"
ALIGN_HINT = ("give the aligned 112x112 sets (e.g. the FaceScrub and MegaFace images of InsightFace's MegaFace test "
              "pack) or install the optional extra `reference` (pip install -e '.[reference]': dlib and its landmark "
              "model) so that the run aligns them (stage align_eval)")


def aligned_eval_set(ctx: StageContext, eval_data: StageResult, image_size: int) -> StageResult:
    """``eval_data`` when its images are square at ``image_size`` (a sample of each set checked), else the
    set aligned to the ArcFace template by ``align_eval_task``; without the ``reference`` extra, a ConfigError
    naming an image that is not aligned and how to align the set."""
    from recognition_eval.face_align import off_size_images
    from semiface.manifest import read_manifest

    frame = read_manifest(eval_data.path("manifest"))
    root = Path(eval_data.summary["image_root"])
    off = [found for split in ("probe", "distractor")
           for found in off_size_images(root, frame.loc[frame["split"] == split, "path"].tolist(), image_size,
                                        sample=ALIGNED_SAMPLE)]
    if not off:
        return eval_data
    path, (width, height) = off[0]
    problem = (f"{len(off)} of the images checked ({ALIGNED_SAMPLE} of each set at most) are not "
               f"{image_size}x{image_size} aligned face crops (e.g. {root / path}: {width}x{height})")
    from backbone.dlib_embedder import load_dlib_models

    try:
        load_dlib_models()
    except ConfigError as exc:
        raise ConfigError(f"eval_set: {problem}; {ALIGN_HINT} ({exc})") from exc
    get_run_logger().info("eval_set: %s: aligning the set to the ArcFace template", problem)
    aligned = result_of(align_eval_task, ctx, eval_data, image_size)
    return replace(aligned, summary={**aligned.summary, "has_images": True,
                                     "image_root": str(Path(aligned.dir) / ALIGNED_FOLDER)})


@task(name="align-eval-set", task_run_name="align-eval-set[{image_size}px]", tags=["stage", "data", "evaluation"],
      retries=1, retry_delay_seconds=5, **stage_options("align_eval"))
def align_eval_task(ctx: StageContext, eval_data: StageResult, image_size: int) -> StageResult:
    """Every image of the evaluation set aligned (dlib's five landmarks onto the ArcFace template) into this
    stage's folder; images without a detected face are kept centre-cropped and listed in ``no_face.txt``."""
    from recognition_eval.face_align import align_images
    from semiface.manifest import read_manifest

    spec = StageSpec("align_eval", {"image_size": image_size, "template": "arcface-112/dlib-5"}, (eval_data,),
                     code=("tasks.align_eval",), reads=(IMAGE_DIGEST, "images", "identities", "noise_removed"))
    store = StageStore(ctx.cache_root)

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        frame = read_manifest(eval_data.path("manifest"))
        progress = Progress(ctx, "align-eval", "aligning the evaluation images")
        done = align_images(eval_data.summary["image_root"], frame["path"].tolist(), folder / ALIGNED_FOLDER,
                            image_size, workers=max(1, ctx.num_workers),
                            progress=lambda n, total: progress.update(100 * n / total))
        with atomic_open(folder / "no_face.txt", "w", encoding="utf-8") as handle:
            handle.write("".join(f"{path}\n" for path in done.no_face))
        manifest = write_manifest(frame, folder / "manifest.parquet")
        no_face = {split: int(frame.loc[frame["split"] == split, "path"].isin(done.no_face).sum())
                   for split in ("probe", "distractor")}
        kept = {k: eval_data.summary[k] for k in ("images", "identities", "noise_removed") if k in eval_data.summary}
        # the aligned images' content, which the stages that read them (extraction) key on
        digest = store.files_digest(folder / ALIGNED_FOLDER, frame["path"].tolist())
        return {"manifest": manifest, "no_face": folder / "no_face.txt"}, {
            **kept, "aligned": done.images, "no_face": no_face, IMAGE_DIGEST: digest}

    def report(result: StageResult) -> str:
        s = result.summary
        rows = [{"set": split, "images": s["images"][split], "no face found (kept, centre-cropped)": s["no_face"][split]}
                for split in ("probe", "distractor")]
        return (f"{s['aligned']} evaluation images aligned to the ArcFace {image_size}x{image_size} template "
                f"(dlib's 5 landmarks, similarity transform); those without a detected face are listed in "
                f"`{result.outputs['no_face']}`.\n\n" + markdown_table(rows))

    return execute(ctx, spec, compute, report)
