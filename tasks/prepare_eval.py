"""Stage 1b, the evaluation set in the MegaFace Challenge 1 layout (FaceScrub probes, MegaFace distractors).

Given ``eval_set``, both models are evaluated on it instead of on the training source's probe /
distractor split: its images are extracted with each model like the training manifest's. A set whose
images are not square at the model's ``image_size`` is aligned first (stage ``align_eval``: dlib's five
landmarks onto the ArcFace template, ``tasks.align_eval``), or refused without the extra.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task

from semiface.errors import ConfigError, reject_unknown
from semiface.manifest import write_manifest
from semiface.markdown import markdown_table
from tasks.common import StageContext, execute, stage_options
from tasks.stage_cache import IMAGE_DIGEST, StageResult, StageSpec, StageStore, content_digest_of

# probes: FaceScrub folder (<identity>/<image>) or devkit list; distractors: MegaFace folder or list;
# the roots: where a list's paths are relative to (only with a list); the noise lists: images to drop
# (the cleaned protocol, recognition_eval.megaface.read_noise_list).
EVAL_SET_KEYS = ("probes", "distractors", "probe_root", "distractor_root", "probe_noise", "distractor_noise")
# Under run_dir, one folder per evaluation set: links to its probe and distractor roots, remade every run.
LINK_FOLDER = "eval-images"


def eval_set_inputs(eval_set: dict[str, Any]) -> dict[str, Path]:
    """The files and folders ``eval_set`` names (checked: known keys, both sets given, roots for lists)."""
    reject_unknown(eval_set, set(EVAL_SET_KEYS), "eval_set")
    inputs = {name: Path(str(value)) for name, value in eval_set.items() if value}
    for name in ("probes", "distractors"):
        if name not in inputs:
            raise ConfigError(f"eval_set: {name!r} is required (a folder or a MegaFace devkit list)")
    image_roots(inputs)  # a list without its root -> DataError before anything runs
    return inputs


def image_roots(inputs: dict[str, Path]) -> dict[str, Path]:
    """The probe and distractor image folders, by their link names in the evaluation manifest."""
    from recognition_eval.megaface import DISTRACTORS, PROBES, image_root

    return {PROBES: image_root(inputs["probes"], inputs.get("probe_root"), "eval_set.probe_root"),
            DISTRACTORS: image_root(inputs["distractors"], inputs.get("distractor_root"), "eval_set.distractor_root")}


@task(name="prepare-eval-set", task_run_name="prepare-eval-set", tags=["stage", "data", "evaluation"],
      retries=1, retry_delay_seconds=5, **stage_options("prepare_eval"))
def prepare_eval_task(ctx: StageContext, eval_set: dict[str, Any]) -> StageResult:
    """The evaluation manifest (probe rows, then distractor rows); cached on the inputs' fingerprints."""
    from recognition_eval.megaface import drop_noise, list_distractors, list_probes, megaface_manifest

    inputs = eval_set_inputs(eval_set)
    spec = StageSpec("prepare_eval", {}, (), {name: str(path) for name, path in inputs.items()}, ("tasks.prepare_eval",))
    store = StageStore(ctx.cache_root)

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        probes, _ = list_probes(inputs["probes"], inputs.get("probe_root"))
        distractors, _ = list_distractors(inputs["distractors"], inputs.get("distractor_root"))
        kept = drop_noise(probes, distractors, inputs.get("probe_noise"), inputs.get("distractor_noise"))
        manifest = write_manifest(megaface_manifest(kept.probes, kept.distractors), folder / "manifest.parquet")
        return {"manifest": manifest}, {
            "images": {"probe": len(kept.probes), "distractor": len(kept.distractors)},
            "identities": {"probe": int(kept.probes["identity"].nunique()), "distractor": len(kept.distractors)},
            "noise_removed": kept.removed,
            # the images' content: every input's (the image folders, or the lists and their roots)
            IMAGE_DIGEST: content_digest_of({name: store.fingerprint(path) for name, path in inputs.items()}),
        }

    def report(result: StageResult) -> str:
        s = result.summary
        rows = [{"set": name, "images": s["images"][name], "identities": s["identities"][name],
                 "removed as noise": s["noise_removed"][name]} for name in ("probe", "distractor")]
        return f"MegaFace-layout evaluation set: `{result.outputs['manifest']}`\n\n" + markdown_table(rows)

    return execute(ctx, spec, compute, report)


def with_image_links(ctx: StageContext, eval_data: StageResult, eval_set: dict[str, Any]) -> StageResult:
    """``eval_data`` whose image root is a folder of links to this run's probe and distractor roots."""
    from recognition_eval.megaface import link_image_roots

    roots = image_roots(eval_set_inputs(eval_set))
    links = link_image_roots(Path(ctx.cache_root).parent / LINK_FOLDER / eval_data.key[:16], roots)
    return replace(eval_data, summary={**eval_data.summary, "image_root": str(links), "has_images": True})
