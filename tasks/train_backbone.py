"""Stage 2, train the backbone on the labelled rows (and, reused by ``retrain``, on a retraining manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from semiface.markdown import markdown_table
from tasks.common import Progress, StageContext, execute, png_markdown, stage_options
from tasks.plots import plot_training_curve
from tasks.stage_cache import IMAGE_DIGEST, StageResult, StageSpec

# The entry modules of the training stages' code; torchrun runs backbone.train by name (-m).
CODE = ("tasks.train_backbone", "backbone.train")
# TrainConfig fields the task sets itself (from the run context or upstream stages).
TASK_OWNED = frozenset({"device", "num_workers", "verbose", "init"})
# Training options that say how the stage launches training, not TrainConfig fields:
# nproc_per_node > 1 trains under torchrun (DDP) in a child process of the task.
LAUNCH_OPTIONS = frozenset({"nproc_per_node"})


def run_training(
    ctx: StageContext,
    stage: str,
    data: StageResult,
    train: dict[str, Any],
    manifest: StageResult | None,
    init: StageResult | None,
    code: tuple[str, ...],
    holdout: float = 0.0,
    seed: int = 0,
) -> StageResult:
    """Train on ``manifest`` (default: the data's own manifest, labelled rows) inside the stage folder;
    ``holdout`` > 0 leaves a seeded share of the labelled identities out (for the clusterer)."""
    from backbone.train import train_backbone
    from backbone.train_config import TrainConfig

    upstream = tuple(r for r in (data, manifest, init) if r is not None)
    params: dict[str, Any] = {"train": train, "init": "upstream" if init else "scratch"}
    if holdout:
        params["clusterer_holdout"] = {"share": holdout, "seed": seed}
    spec = StageSpec(stage, params, upstream, code=code, reads=(IMAGE_DIGEST,),
                     runtime={"device": ctx.device, "num_workers": ctx.num_workers})

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        logger = get_run_logger()
        config = TrainConfig.from_dict({
            **{k: v for k, v in train.items() if k not in LAUNCH_OPTIONS}, "device": ctx.device, "num_workers": ctx.num_workers, "verbose": False,
            "init": str(init.path("model")) if init else "scratch",
        })
        progress = Progress(ctx, stage, f"{stage}: epochs done")

        def on_epoch(e: dict) -> None:
            logger.info("%s epoch %d/%d: loss %.4f, lr %.4g, %.1f img/s", stage, e["epoch"], e["epochs"],
                        e["loss"], e["lr"], e["images_per_sec"])
            progress.update(100.0 * e["epoch"] / e["epochs"])

        source = manifest.path("manifest") if manifest else data.path("manifest")
        if holdout:
            from clustering.clusterer_holdout import clusterer_holdout_mask, without_rows
            from semiface.manifest import read_manifest, write_manifest

            frame = read_manifest(source)
            source = write_manifest(without_rows(frame, clusterer_holdout_mask(frame, holdout, seed)),
                                    folder / "backbone_manifest.parquet")
        record = Path(data.summary["record_file"]) if data.summary.get("record_file") else None
        nproc = int(train.get("nproc_per_node", 1))
        if nproc > 1:
            from tasks.torchrun import train_with_torchrun

            logger.info("%s: training under torchrun with %d processes", stage, nproc)
            model = train_with_torchrun(nproc, Path(source), _image_root(data), folder / "train", config, record,
                                        on_epoch)
        else:
            model = train_backbone(source, _image_root(data), folder / "train", config, progress=on_epoch,
                                   record_file=record)
        progress.update(100.0)
        metrics = model.parent / "metrics.json"
        history = json.loads(metrics.read_text(encoding="utf-8"))
        plot = plot_training_curve(history, folder / "training_curve.png", f"{stage}: {train.get('trunk', '')}")
        last = history[-1]
        summary = {
            "trunk": config.trunk, "epochs": config.epochs, "num_images": last["num_images"],
            "num_classes": last["num_classes"], "final_loss": last["loss"],
            "images_per_sec": last["images_per_sec"], "init": config.init,
            "history": [{k: e[k] for k in ("epoch", "loss", "lr", "seconds")} for e in history],
        }
        return {"model": model, "metrics": metrics, "plot": plot}, summary

    return execute(ctx, spec, compute, _report)


def _image_root(data: StageResult) -> Path | None:
    root = data.summary.get("image_root")
    return Path(root) if root else None


def _report(result: StageResult) -> str:
    s = result.summary
    head = (f"Trunk `{s['trunk']}`, {s['num_images']} images of {s['num_classes']} classes, "
            f"{s['epochs']} epochs, init `{s['init']}`: final loss {s['final_loss']:.4f}.\n\n"
            f"Model: `{result.outputs['model']}`\n\n")
    return head + markdown_table(s["history"]) + "\n" + png_markdown(result.outputs["plot"], "training curve")


@task(name="train-backbone", task_run_name="train-backbone[{ctx.label}]", tags=["stage", "backbone", "gpu"],
      retries=1, retry_delay_seconds=10, **stage_options("train_backbone"))
def train_backbone_task(
    ctx: StageContext, data: StageResult, train: dict[str, Any], holdout: float = 0.0, seed: int = 0
) -> StageResult:
    """The first model: trained on the labelled rows only (without ``holdout`` > 0, it is also the
    lower bound); ``holdout``: the share of labelled identities kept for the clusterer."""
    return run_training(ctx, "train_backbone", data, train, None, None, CODE, holdout, seed)
