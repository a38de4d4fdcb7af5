"""Stage 7, the retraining set: labelled rows + pseudo-labelled clusters (or one of the two bounds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from clustering.pseudo_labels import lower_bound_frame, merge_pseudo_labels, upper_bound_frame
from semiface.atomic import save_json
from semiface.manifest import read_manifest, write_manifest
from semiface.markdown import markdown_table
from tasks.common import StageContext, execute, stage_options, summary_rows
from tasks.stage_cache import StageResult, StageSpec

# pseudo: the clusters as new classes; upper_bound: the sampled rows' ground-truth identities;
# lower_bound: labelled rows only.
MODES = ("pseudo", "upper_bound", "lower_bound")


@task(name="merge-pseudo-labels", task_run_name="merge-pseudo-labels[{ctx.label}/{mode}]",
      tags=["stage", "pseudo-labels"], **stage_options("merge_pseudo_labels"))
def merge_pseudo_labels_task(
    ctx: StageContext,
    data: StageResult,
    mode: str,
    knn: StageResult | None = None,
    clusters: StageResult | None = None,
    min_cluster_size: int = 2,
    min_confidence: float = 0.0,
) -> StageResult:
    """Write ``retrain_manifest.parquet`` (``label_source`` gt/pseudo, ``weight``) and its merge summary.

    ``pseudo`` needs the unlabelled sample (``knn``: its ``rows.npy``) and its ``clusters``;
    ``upper_bound`` needs the sample only; ``lower_bound`` neither.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "lower_bound" and knn is None:
        raise ValueError(f"mode {mode!r} needs the unlabelled sample (knn)")
    if mode == "pseudo" and clusters is None:
        raise ValueError("mode 'pseudo' needs the clusters")
    params: dict[str, Any] = {"mode": mode}
    if mode == "pseudo":
        params.update(min_cluster_size=min_cluster_size, min_confidence=min_confidence)
    upstream = tuple(r for r in (data, knn, clusters if mode == "pseudo" else None) if r is not None)
    spec = StageSpec("merge_pseudo_labels", params, upstream,
                     code=("tasks.merge_pseudo_labels",), reads=("metrics",))

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        manifest = read_manifest(data.path("manifest"))
        if mode == "lower_bound":
            frame = lower_bound_frame(manifest)
            summary: dict[str, Any] = {"n_labelled": len(frame), "n_labelled_classes": int(frame["label"].nunique()),
                                       "n_kept": 0}
        else:
            rows = np.load(knn.path("rows"))
            if mode == "upper_bound":
                frame, merged = upper_bound_frame(manifest, rows)
            else:
                frame, merged = merge_pseudo_labels(
                    manifest, rows, np.load(clusters.path("pred_labels")), np.load(clusters.path("confidence")),
                    min_cluster_size=min_cluster_size, min_confidence=min_confidence)
            summary = merged.as_dict()
            metrics = clusters.summary.get("metrics") if clusters is not None and mode == "pseudo" else None
            if metrics:
                summary.update({"pairwise_f": metrics["pairwise_f"], "bcubed_f": metrics["bcubed_f"],
                                "nmi": metrics["nmi"]})
        summary["mode"] = mode
        summary["n_rows"] = len(frame)
        summary["n_classes"] = int(frame["label"].max()) + 1
        manifest_path = write_manifest(frame.reset_index(drop=True), folder / "retrain_manifest.parquet")
        save_json(folder / "merge_summary.json", summary)
        return {"manifest": manifest_path, "summary": folder / "merge_summary.json"}, summary

    return execute(ctx, spec, compute, _report, _tables)


def _report(result: StageResult) -> str:
    s = result.summary
    if s["mode"] == "lower_bound":
        head = f"Lower bound: the {s['n_labelled']} labelled images of {s['n_labelled_classes']} classes only.\n\n"
    elif s["mode"] == "upper_bound":
        head = (f"Upper bound: the {s['n_sampled']} sampled unlabelled images with their ground-truth "
                f"identities ({s['n_pseudo_classes']} classes) beside the labelled ones.\n\n")
    else:
        purity = "unknown (no ground truth)" if s["purity"] is None else f"{100 * s['purity']:.2f} %"
        head = (f"Kept **{s['n_kept']} of {s['n_sampled']}** sampled unlabelled images "
                f"({100 * s['kept_fraction']:.1f} %) in {s['n_pseudo_classes']} pseudo classes; "
                f"purity of what was kept: {purity}.\n\n")
    return head + f"Retraining manifest: `{result.outputs['manifest']}`\n\n" + markdown_table(summary_rows(s))


def _tables(result: StageResult) -> dict[str, list[dict[str, Any]]]:
    s = result.summary
    if s["mode"] != "pseudo":
        return {}
    columns = ("n_sampled", "n_kept", "kept_fraction", "n_pseudo_classes", "dropped_unclustered",
               "dropped_low_confidence", "dropped_small_clusters", "purity", "pairwise_f", "bcubed_f", "nmi")
    return {"pseudo-label-merge": [{c: s.get(c) for c in columns}]}
