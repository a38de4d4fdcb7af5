"""Stage 9, MegaFace-style identification and verification of a model's features (probe vs distractors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from recognition_eval.identification import DEFAULT_SIZES
from semiface.markdown import markdown_table
from tasks.common import Progress, StageContext, execute, png_markdown, stage_options
from tasks.stage_cache import StageResult, StageSpec

PLOTS = {"rank1_plot": "rank1_vs_distractors.png", "cmc_plot": "cmc.png", "roc_plot": "roc.png"}


@task(name="evaluate", task_run_name="evaluate[{ctx.label}/{model_name}]", tags=["stage", "evaluation"],
      retries=1, retry_delay_seconds=2, **stage_options("evaluate"))
def evaluate_task(
    ctx: StageContext,
    data: StageResult,
    features: StageResult,
    model_name: str,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seed: int = 0,
    train_data: StageResult | None = None,
) -> StageResult:
    """Rank-1 (CMC) at each distractor-set size and TAR at FAR of ``features``' probe rows.

    ``model_name`` ("first model", "retrained") only labels the dashboard; it is not part of the key.
    ``train_data``: the training manifest when ``data`` is a separate evaluation set (its identities
    feed the overlap guard).
    """
    from recognition_eval.report import TRAIN_SPLITS, evaluate
    from semiface.manifest import read_manifest

    upstream = (data, features) if train_data is None else (data, features, train_data)
    spec = StageSpec("evaluate", {"sizes": [int(s) for s in sizes], "seed": seed}, upstream,
                     code=("tasks.evaluate",), runtime={"device": ctx.device}, reads=("noise_removed",))

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        train_identities = None
        if train_data is not None:
            frame = read_manifest(train_data.path("manifest"))
            train_identities = frame.loc[frame["split"].isin(TRAIN_SPLITS), "identity"].unique().tolist()
        progress = Progress(ctx, f"evaluate-{model_name}", f"scoring {model_name} probes against distractors")
        provenance = {"noise_removed": data.summary["noise_removed"]} if "noise_removed" in data.summary else None
        summary = evaluate(features.path("features"), data.path("manifest"), folder, sizes=sizes, seed=seed,
                           device=ctx.device, train_identities=train_identities, progress=progress.update,
                           provenance=provenance)
        outputs = {"results": folder / "results.json", "identification": folder / "identification.parquet",
                   "verification": folder / "verification.parquet"}
        outputs.update({name: folder / file for name, file in PLOTS.items()})
        return outputs, summary

    def report(result: StageResult) -> str:
        s = result.summary
        text = capped_note(sizes, s["largest_size"]) + (f"**{model_name}**: rank-1 {100 * s['rank1_at_largest']:.2f} % at {s['largest_size']} distractors "
                f"({s['n_pairs']} probe pairs).\n\n" + markdown_table(identification_rows(result, model_name)))
        return text + "\n" + "".join(png_markdown(result.outputs[name], name.replace("_", " ")) for name in PLOTS)

    return execute(ctx, spec, compute, report,
                   lambda r: {f"identification-{model_name}": identification_rows(r, model_name)})


def identification_rows(result: StageResult, model_name: str) -> list[dict[str, Any]]:
    """One row per distractor-set size: the model, the size label and rank-1."""
    return [{"model": model_name, "distractors": size, "rank1": value}
            for size, value in result.summary["rank1"].items()]


def capped_note(sizes: Sequence[int], largest: int) -> str:
    """A loud line (report and run log) when sizes above the distractors there are were evaluated at all of
    them (the flow's default sizes; sizes a caller chose are refused before the run instead)."""
    capped = sorted(int(size) for size in sizes if int(size) > largest)
    if not capped:
        return ""
    note = (f"distractor sizes {capped} asked for, but the set holds {largest:,} distractors: "
            f"those sizes were evaluated at {largest:,}")
    get_run_logger().warning(note)
    return f"**Capped: {note}.**\n\n"
