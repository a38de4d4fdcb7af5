"""Stage 4, kNN graphs: of the labelled features (to train the clusterer) and of the sampled unlabelled ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task

from clustering.clusterer_holdout import clusterer_holdout_mask
from clustering.knn import build_knn
from clustering.pseudo_labels import sample_unlabelled
from semiface.atomic import save_npy
from semiface.features import load_features
from semiface.manifest import read_manifest
from semiface.markdown import markdown_table
from tasks.common import Progress, StageContext, execute, stage_options, summary_rows
from tasks.stage_cache import StageResult, StageSpec

SUBSETS = ("labelled", "unlabelled")


@task(name="build-knn", task_run_name="build-knn[{ctx.label}/{subset}]", tags=["stage", "clustering"],
      **stage_options("build_knn"))
def build_knn_task(
    ctx: StageContext,
    data: StageResult,
    features: StageResult,
    subset: str,
    k: int,
    ratio: float | None = None,
    seed: int = 0,
    holdout: float = 0.0,
) -> StageResult:
    """``subset="labelled"``: every labelled row, or with ``holdout`` > 0 the rows of the labelled
    identities held out of the first backbone's training; ``"unlabelled"``: N_U = ratio x N_L sampled rows.

    Writes ``rows.npy`` (manifest row numbers, the graph's node order) and ``knn.npz``.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    params = {"subset": subset, "k": k, "ratio": ratio if subset == "unlabelled" else None, "seed": seed}
    if holdout and subset == "labelled":
        params["clusterer_holdout"] = holdout
    spec = StageSpec("build_knn", params, (data, features),
                     code=("tasks.build_knn",),
                     runtime={"device": ctx.device})

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        manifest = read_manifest(data.path("manifest"))
        summary: dict[str, Any] = {"subset": subset}
        if subset == "labelled" and holdout:
            rows = np.flatnonzero(clusterer_holdout_mask(manifest, holdout, seed))
        elif subset == "labelled":
            rows = np.flatnonzero(manifest["split"].to_numpy() == "labelled")
        else:
            sample = sample_unlabelled(manifest, ratio, seed)
            rows = sample.index
            summary["sample"] = sample.describe()
            if sample.capped:
                get_run_logger().warning(
                    "r_U/L=%g asks for %d unlabelled images but the pool holds %d: using all (r_U/L=%.2f)",
                    ratio, sample.requested, sample.available, sample.effective_ratio)
        feats = np.asarray(load_features(features.path("features"))[rows], dtype=np.float32)
        k_used = min(k, len(rows))
        progress = Progress(ctx, f"knn-{subset}", f"kNN search over {len(rows)} {subset} rows")
        graph = build_knn(feats, k_used, device=ctx.device, progress=progress.update)
        graph.save(folder / "knn.npz")
        save_npy(folder / "rows.npy", rows.astype(np.int64))
        summary.update({
            "nodes": int(len(rows)), "k": k_used, "k_requested": k,
            "mean_sim_nearest_other": float(graph.sims[:, 1].mean()) if k_used > 1 else None,
        })
        return {"knn": folder / "knn.npz", "rows": folder / "rows.npy"}, summary

    def report(result: StageResult) -> str:
        s = dict(result.summary)
        sample = s.pop("sample", None)
        text = markdown_table(summary_rows(s))
        if sample:
            text += "\nUnlabelled sample:\n\n" + markdown_table(summary_rows(sample))
        return text

    return execute(ctx, spec, compute, report)
