"""Stage 6, cluster the sampled unlabelled features; score the partition where ground truth exists."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from clustering.metrics import evaluate_partition
from semiface.atomic import save_json, save_npy
from semiface.manifest import known_identity_mask, read_manifest
from semiface.markdown import markdown_table
from tasks.common import Progress, StageContext, execute, stage_options
from tasks.stage_cache import StageResult, StageSpec
from tasks.train_clusterer import RUNTIME_PARAMS, load_method, subset

METRIC_COLUMNS = ("pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_precision", "bcubed_recall",
                  "bcubed_f", "nmi", "fmi", "noise_ratio", "n_clusters", "n_singletons", "n_unclustered")


@task(name="cluster", task_run_name="cluster[{ctx.label}/{method}]", tags=["stage", "clustering", "gpu"],
      **stage_options("cluster"))
def cluster_task(
    ctx: StageContext,
    data: StageResult,
    features: StageResult,
    knn: StageResult,
    trained: StageResult,
    method: str,
    params: dict[str, Any],
) -> StageResult:
    """``pred_labels.npy`` (int64, -1 = unclustered) and ``confidence.npy`` for the rows of ``knn``."""
    key_params = {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}
    spec = StageSpec("cluster", {"method": method, "params": key_params}, (data, features, knn, trained),
                     code=("tasks.cluster",), runtime={"device": ctx.device})

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        progress = Progress(ctx, "cluster", f"clustering with {method}")
        rows, feats, graph = subset(features, knn)
        identities = read_manifest(data.path("manifest"))["identity"].iloc[rows]
        has_truth = bool(known_identity_mask(identities).all())
        gt = np.unique(identities.to_numpy(), return_inverse=True)[1] if has_truth else None
        model = load_method(method, key_params, trained, ctx.device)
        if model.is_oracle:
            model = _with_true_count(method, key_params, ctx.device, gt, load_method)
        progress.update(10.0)
        pred = np.asarray(model.fit_predict(feats, graph), dtype=np.int64)
        progress.update(80.0)
        conf = model.confidence_
        confidence = np.ones(len(pred), dtype=np.float32) if conf is None else np.asarray(conf, dtype=np.float32)
        save_npy(folder / "pred_labels.npy", pred)
        save_npy(folder / "confidence.npy", confidence)
        metrics = {k: _plain(v) for k, v in evaluate_partition(gt, pred).items()} if has_truth else None
        sizes = np.bincount(pred[pred >= 0]) if (pred >= 0).any() else np.zeros(0, dtype=np.int64)
        sizes = sizes[sizes > 0]
        summary = {
            "method": method, "rows": int(len(pred)), "clusters": int(len(sizes)),
            "singletons": int((sizes == 1).sum()), "unclustered": int((pred < 0).sum()),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0,
            "true_identities": int(gt.max() + 1) if has_truth else None,
            "confidence_given": conf is not None, "metrics": metrics,
        }
        save_json(folder / "cluster_summary.json", summary)
        progress.update(100.0)
        return {"pred_labels": folder / "pred_labels.npy", "confidence": folder / "confidence.npy",
                "summary": folder / "cluster_summary.json"}, summary

    return execute(ctx, spec, compute, _report, _tables)


def _with_true_count(method, params, device, gt, load) -> Any:
    """Oracle baselines are told the true number of identities (only possible with ground truth)."""
    from clustering.base import make_method

    if gt is None:
        raise ValueError(f"{method} is an oracle method and needs ground-truth identities of the unlabelled rows")
    accepted = inspect.signature(type(make_method(method, **params))).parameters
    name = next((n for n in ("n_clusters", "k") if n in accepted and n not in params), None)
    if name is None:
        return make_method(method, **params)
    return make_method(method, **{**params, name: int(gt.max() + 1)})


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _report(result: StageResult) -> str:
    s = result.summary
    text = (f"`{s['method']}` on {s['rows']} unlabelled rows: {s['clusters']} clusters "
            f"({s['singletons']} singletons, largest {s['largest_cluster']}), {s['unclustered']} unclustered.\n\n")
    if s["metrics"]:
        text += f"Ground truth: {s['true_identities']} identities.\n\n" + markdown_table(_metric_rows(s))
    else:
        text += "No ground truth for these rows: no clustering metrics.\n"
    return text


def _metric_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    metrics = summary["metrics"] or {}
    return [{"method": summary["method"], **{k: metrics[k] for k in METRIC_COLUMNS if k in metrics}}]


def _tables(result: StageResult) -> dict[str, list[dict[str, Any]]]:
    return {"clustering-metrics": _metric_rows(result.summary)} if result.summary["metrics"] else {}
