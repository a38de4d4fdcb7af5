"""Stage 5, train the clustering method (FaceT, Clusformer) on the labelled features."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task

from clustering.base import Clusterer, make_method
from clustering.knn import KnnGraph
from semiface.errors import ConfigError
from semiface.features import load_features
from semiface.manifest import read_manifest
from semiface.markdown import markdown_table
from tasks.common import Progress, StageContext, execute, stage_options, summary_rows
from tasks.stage_cache import StageResult, StageSpec

# Method parameters that change where or how a method runs, not what it computes: set by the
# task (device from the run, checkpoints inside the stage folder), left out of the cache key.
RUNTIME_PARAMS = frozenset({"device", "work_dir", "checkpoint", "progress"})


def build_method(method: str, params: dict[str, Any], device: str, work: Path | None = None) -> Clusterer:
    """``make_method`` with the runtime parameters the method accepts filled in."""
    probe = make_method(method, **params)
    accepted = inspect.signature(type(probe)).parameters
    runtime: dict[str, Any] = {"device": device}
    if work is not None:
        runtime.update({"work_dir": str(work), "checkpoint": str(work / "checkpoint.pt")})
    extra = {k: v for k, v in runtime.items() if k in accepted and k not in params}
    return make_method(method, **params, **extra) if extra else probe


def with_tune_samples(method: str, params: dict[str, Any], target_rows: int | None) -> dict[str, Any]:
    """``params`` with ``tune_samples=target_rows`` when the method takes it and it is not set."""
    if target_rows is None or "tune_samples" in params:
        return params
    accepted = inspect.signature(type(make_method(method, **params))).parameters
    return {**params, "tune_samples": int(target_rows)} if "tune_samples" in accepted else params


def load_method(method: str, params: dict[str, Any], trained: StageResult, device: str) -> Clusterer:
    """The trained method of ``trained`` when it has one, else a fresh (training-free) method."""
    if "model" not in trained.outputs:
        return build_method(method, params, device)
    cls = type(make_method(method, **params))
    loader = cls.load
    if "device" in inspect.signature(loader).parameters:
        return loader(trained.path("model"), device=device)
    return loader(trained.path("model"))


def sample_share(n_rows: int, share: float, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random ``share`` of ``n_rows`` rows (at least 2), as the unlabelled
    rows are drawn from their pool (``clustering.pseudo_labels.sample_unlabelled``)."""
    count = min(n_rows, max(2, int(round(share * n_rows))))
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:count])


def subset(features: StageResult, knn: StageResult) -> tuple[np.ndarray, np.ndarray, KnnGraph]:
    """(manifest row numbers, their features, their kNN graph) of a build-knn stage."""
    rows = np.load(knn.path("rows"))
    feats = np.asarray(load_features(features.path("features"))[rows], dtype=np.float32)
    return rows, feats, KnnGraph.load(knn.path("knn"))


@task(name="train-clusterer", task_run_name="train-clusterer[{ctx.label}/{method}]",
      tags=["stage", "clustering", "gpu"], retries=1, retry_delay_seconds=10, **stage_options("train_clusterer"))
def train_clusterer_task(
    ctx: StageContext,
    data: StageResult,
    features: StageResult,
    knn: StageResult,
    method: str,
    params: dict[str, Any],
    target_rows: int | None = None,
    fit_share: float = 1.0,
    seed: int = 0,
) -> StageResult:
    """Fit ``method`` on the labelled rows of ``knn``; methods that learn nothing record just that.

    ``target_rows``: the size of the set to be clustered. A method that tunes its threshold on a
    labelled slice (``tune_samples``) takes that size unless ``params`` gives one, so every method
    tunes on the same rows, at the density it will cluster.
    ``fit_share`` < 1: fit on a seeded random share of those rows only, the share of the unlabelled
    pool that was sampled, so that an identity has as many images here as in the set to be clustered.
    """
    key_params = with_tune_samples(method, {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}, target_rows)
    if not 0.0 < fit_share <= 1.0:
        raise ConfigError(f"fit_share: a share of the labelled rows in (0, 1], got {fit_share}")
    key: dict[str, Any] = {"method": method, "params": key_params}
    if fit_share < 1.0:
        key["fit_share"] = {"share": round(fit_share, 6), "seed": seed}
    spec = StageSpec("train_clusterer", key, (data, features, knn),
                     code=("tasks.train_clusterer",), runtime={"device": ctx.device})

    def compute(folder: Path) -> tuple[dict[str, Path], dict[str, Any]]:
        model = build_method(method, key_params, ctx.device, work=folder / "work")
        if not model.needs_training:
            return {}, {"method": method, "trained": False}
        (folder / "work").mkdir(exist_ok=True)
        progress = Progress(ctx, "train-clusterer", f"training {method}")
        rows, feats, graph = subset(features, knn)
        if fit_share < 1.0:
            kept = sample_share(len(rows), fit_share, seed)
            rows, feats = rows[kept], feats[kept]
        fit_graph = graph if fit_share == 1.0 else None  # None: the method builds the graph of the rows kept
        labels = read_manifest(data.path("manifest"))["label"].to_numpy()[rows]
        started = time.perf_counter()
        if "on_epoch" in inspect.signature(model.fit).parameters:  # FaceT, Clusformer: progress per epoch
            model.fit(feats, labels, fit_graph, on_epoch=lambda r: progress.update(90.0 * r["epoch"] / r["epochs"]))
        else:
            model.fit(feats, labels, fit_graph)
        progress.update(90.0)
        path = model.save(folder / "clusterer.pt")
        progress.update(100.0)
        history = [_plain(h) for h in getattr(model, "history_", [])]
        tau = getattr(model, "tau_", None)
        get_run_logger().info("%s trained on %d labelled rows in %.1f s (tuned tau: %s)",
                              method, len(rows), time.perf_counter() - started, tau)
        return {"model": path}, {"method": method, "trained": True, "rows": int(len(rows)),
                                 "classes": int(len(np.unique(labels))), "tau": tau, "history": history}

    def report(result: StageResult) -> str:
        s = result.summary
        if not s["trained"]:
            return f"`{method}` learns nothing from labelled data: no training.\n"
        text = markdown_table(summary_rows(s))
        if s["history"]:
            text += "\nPer epoch:\n\n" + markdown_table(s["history"])
        return text

    return execute(ctx, spec, compute, report)


def _plain(row: dict) -> dict:
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}
