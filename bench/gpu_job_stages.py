"""The job stages of ``bench/gpu_check.py``: the pipeline's own code paths fed with real bytes, timed whole.

Each function runs in a child process of ``gpu_check`` and returns a dict of figures. They read the
data ``bench.gpu_job_data`` generated in the work folder (JPEG faces in a RecordIO, MS1M-like features)
and go through the code a run of ``semi-supervised/ms1m`` goes through:

* ``loader``: the training loader (``backbone.loader.make_loader``: RecordIO, workers, flip recipe) and
  ``backbone.model_input.device_batches`` (the model's input on the device), no model: img/s with the
  JPEGs decoded by the workers and on the device;
* ``train_e2e``: the same loader feeding ``backbone.steps.train_step`` for one trunk, both decode paths:
  img/s, the share of the step time the loop waits for its next batch, and the same model's img/s on
  a batch already on the device (what the data path leaves of it);
* ``extract_e2e``: ``backbone.extract.extract_features`` over the RecordIO (each row several times),
  the whole call, both decode paths;
* ``facet_train`` / ``clusformer_train``: ``make_method(...).fit`` at the paper preset on labelled
  generated features, one epoch of warm-up then one timed epoch of ``train_steps`` steps (the training
  budget options ``max_train_pivots`` / ``max_train_centres`` size an epoch): step time, and the hours
  of the paper's schedule on MS1M's labelled part, extrapolated from it;
* ``cluster_e2e``: kNN + ``fit_predict`` (inference, links, partition) of 584K generated rows with the
  weights of that short fit (the fit is not timed);
* ``facet_memmap``: FaceT's inference with the features and enhanced features in memory maps
  (``memmap_bytes=0``: the mode of sets beyond ~1M rows) beside the in-memory rate;
* ``knn_ivf``: ``build_knn``'s IVF search (GPU faiss) of 1M rows, recall against an exact search.
"""

from __future__ import annotations

import gc
import importlib
import math
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu_job_data import face_record, feature_set

MS1M_TRAIN_PIVOTS = 466_000  # MS1M's labelled part less the identities held out for validation (issue 27)
BUDGET_HOURS = 2.0  # FaceT's paper-preset training on MS1M's labelled part must fit in this


class Skipped(Exception):
    """The stage cannot run here (an optional package is missing); its message says why."""


def require(module: str) -> None:
    """Import ``module`` or skip the stage, saying so."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise Skipped(f"{module} not importable ({exc})") from exc


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def loader_workers(size: dict) -> int:
    """Data-loading workers: the CPUs this process may use less two (the training process and the
    pin-memory thread), at least ``size['min_workers']``."""
    from backbone.loader import usable_cpus

    return max(size["min_workers"], usable_cpus() - 2)


def knn_graph(features: np.ndarray, k: int, device: torch.device):
    """(graph, backend): ``clustering.knn.build_knn`` on ``device``; on a CPU without faiss, the exact
    torch search CUDA uses when no GPU faiss is installed (``clustering.torch_knn``), run on the CPU."""
    from clustering.knn import KnnGraph, build_knn
    from clustering.torch_knn import torch_exact_knn
    from semiface.faiss_backend import knn_backend

    backend = knn_backend(str(device))
    if backend == "faiss-cpu":
        try:
            importlib.import_module("faiss")
        except ImportError:
            nbrs, sims = torch_exact_knn(features, k, device)
            return KnnGraph(nbrs=nbrs, sims=sims), "torch-cpu (faiss not importable)"
    return build_knn(features, k, exact_threshold=len(features) + 1, device=str(device)), backend


# ---------------------------------------------------------------------------------------------
# Images: loader, training, extraction


def _faces(size: dict, work: Path):
    return face_record(work, size["faces"], size["image_size"])


def _train_config(size: dict, trunk: str, decode: str, device: torch.device):
    from backbone.train_config import TrainConfig

    return TrainConfig(trunk=trunk, image_size=size["image_size"], batch_size=size["batch"], augment="flip",
                       num_workers=loader_workers(size), decode=decode, device=str(device), verbose=False)


def _loader(size: dict, work: Path, trunk: str, decode: str, device: torch.device):
    """The training loader of one rank over the generated RecordIO (``backbone.loader.make_loader``)."""
    from backbone.distributed import Distributed
    from backbone.loader import make_loader
    from backbone.training_rows import select_training_rows
    from semiface.manifest import read_manifest

    record = _faces(size, work)
    config = _train_config(size, trunk, decode, device)
    rows = select_training_rows(read_manifest(record.manifest), record.manifest)
    _, sampler, loader = make_loader(config, rows, None, record.rec, Distributed(), size["batch"], device)
    return config, rows, sampler, loader


def _batches(loader, sampler, device: torch.device, image_size: int):
    """Model inputs epoch after epoch, for ever (the sampler's epoch set before each pass, as training does)."""
    from backbone.model_input import device_batches

    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from device_batches(loader, device, image_size)
        epoch += 1


def stage_loader(size: dict, device: torch.device, work: Path) -> dict:
    """img/s of the training loader + the device stage (decode where asked, flip, normalise), no model."""
    figures = {"workers": loader_workers(size), "batch": size["batch"], "images": size["faces"]}
    for decode in ("cpu", "device"):
        config, rows, sampler, loader = _loader(size, work, size["trunks"][0], decode, device)
        batches = _batches(loader, sampler, device, config.image_size)
        for _ in range(size["warmup"]):
            next(batches)
        synchronize(device)
        started = time.perf_counter()
        seen = 0
        for _ in range(size["steps"]):
            batch, images = next(batches)
            seen += len(images)
        synchronize(device)
        figures[f"img_per_s_{decode}_decode"] = seen / (time.perf_counter() - started)
        del batches, loader
        gc.collect()
    return figures


def _margin_model(config, num_classes: int, device: torch.device):
    from backbone.margin import MarginHead
    from backbone.model import build_model
    from backbone.steps import MarginModel

    torch.manual_seed(0)
    embedder = build_model(config.model_config(), device)
    return MarginModel(embedder, MarginHead(embedder.config.embedding_dim, num_classes).to(device))


def stage_train_e2e(size: dict, device: torch.device, work: Path, trunk: str) -> dict:
    """RecordIO -> workers -> device -> training step of ``trunk``, ``steps`` timed steps per decode path.

    ``wait_share``: the time the loop spends in ``next()`` for its batch over the whole step time (the
    step's backward and update run on the GPU meanwhile: on CUDA ``train_step`` waits for the forward's
    loss only). ``model_only_img_per_s``: the same model on one batch kept on the device, no loading."""
    from backbone.macs import gmacs_per_image
    from backbone.steps import make_optimizer, train_step
    from semiface.devices import autocast_dtype

    figures: dict = {"trunk": trunk, "workers": loader_workers(size), "batch": size["batch"], "steps": size["steps"]}
    amp = autocast_dtype(device)
    losses: list[float] = []
    images = labels = None
    model = optimizer = scaler = None
    reset_peak(device)
    for decode in ("cpu", "device"):
        config, rows, sampler, loader = _loader(size, work, trunk, decode, device)
        if model is None:
            model = _margin_model(config, rows.num_classes, device).train()
            optimizer = make_optimizer(config, model.parameters())
            scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
            figures["gmacs_per_image"] = gmacs_per_image(config.model_config())
            figures["precision"] = str(amp).replace("torch.", "") if amp else "float32"
        batches = _batches(loader, sampler, device, config.image_size)
        waited = started = 0.0
        for step in range(size["warmup"] + size["steps"]):
            if step == size["warmup"]:
                synchronize(device)
                waited, started = 0.0, time.perf_counter()
            before = time.perf_counter()
            batch, images = next(batches)
            waited += time.perf_counter() - before
            labels = batch.labels
            losses.append(train_step(model, optimizer, scaler, (images, labels, batch.weights), device, amp,
                                     config.grad_clip))
        synchronize(device)
        seconds = time.perf_counter() - started
        figures[f"img_per_s_{decode}_decode"] = size["steps"] * size["batch"] / seconds
        figures[f"wait_share_{decode}_decode"] = waited / seconds
        del batches, loader
        gc.collect()
    data = (images, labels, torch.ones(len(labels)))
    synchronize(device)
    started = time.perf_counter()
    for _ in range(size["model_only_steps"]):
        losses.append(train_step(model, optimizer, scaler, data, device, amp, config.grad_clip))
    synchronize(device)
    figures["model_only_img_per_s"] = size["model_only_steps"] * size["batch"] / (time.perf_counter() - started)
    for decode in ("cpu", "device"):
        figures[f"data_bound_share_{decode}_decode"] = max(
            0.0, 1.0 - figures[f"img_per_s_{decode}_decode"] / figures["model_only_img_per_s"])
    figures["loss_finite"] = all(math.isfinite(x) for x in losses)
    figures["peak_gpu_mib"] = peak_gpu_mib(device)
    return figures


def stage_extract_e2e(size: dict, device: torch.device, work: Path, trunk: str) -> dict:
    """``extract_features`` over the RecordIO's rows ``extract_passes`` times, per decode path: img/s of the
    whole call (model load and worker start included) and after its first batch, and the smallest cosine
    between the two paths' features of a row (their JPEG decoders differ)."""
    import pandas as pd

    from backbone.checkpoint import save_checkpoint
    from backbone.extract import extract_features
    from backbone.macs import gmacs_per_image
    from backbone.model import ModelConfig, build_model
    from semiface.manifest import read_manifest, write_manifest

    record = _faces(size, work)
    config = ModelConfig(trunk, size["image_size"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(work / f"embedder_{trunk}.pt", {
        "model_config": config.to_dict(), "model": build_model(config, torch.device("cpu")).state_dict()})
    frame = read_manifest(record.manifest)
    manifest = write_manifest(pd.concat([frame] * size["extract_passes"], ignore_index=True),
                              work / f"extract_{size['extract_passes']}.parquet")
    rows = len(frame) * size["extract_passes"]
    figures: dict = {"trunk": trunk, "rows": rows, "batch": size["batch"], "workers": loader_workers(size),
                     "gmacs_per_image": gmacs_per_image(config)}
    features = {}
    reset_peak(device)
    for decode in ("cpu", "device"):
        out = work / f"features_{trunk}_{decode}.npy"
        batch_ends: list[float] = []  # told after each batch
        started = time.perf_counter()
        extract_features(checkpoint, manifest, None, out, batch_size=size["batch"], device=str(device),
                         num_workers=loader_workers(size), record_file=record.rec, decode=decode,
                         progress=lambda _, ends=batch_ends: ends.append(time.perf_counter()))
        ended = time.perf_counter()
        figures[f"img_per_s_{decode}_decode"] = rows / (ended - started)
        figures[f"img_per_s_after_first_batch_{decode}_decode"] = (rows - size["batch"]) / (ended - batch_ends[0])
        features[decode] = np.load(out, mmap_mode="r")[: len(frame)]
    figures["decode_paths_min_cosine"] = float((features["cpu"] * features["device"]).sum(1).min())
    figures["dim"] = int(features["cpu"].shape[1])
    figures["peak_gpu_mib"] = peak_gpu_mib(device)
    return figures


# ---------------------------------------------------------------------------------------------
# Clustering: training step time, end to end at 584K, memory-map mode, IVF kNN


def _labelled(size: dict, work: Path) -> tuple[np.ndarray, np.ndarray]:
    features, labels = feature_set(work, "labelled", size["labelled_rows"], seed=1)
    return np.load(features), np.load(labels)


def _unlabelled(size: dict, work: Path, rows: int | None = None) -> tuple[Path, np.ndarray]:
    features, labels = feature_set(work, "unlabelled", size["unlabelled_rows"], seed=2)
    return features, np.load(labels)[:rows]


FIT_PARAMS = {
    # no held-out identities (no validation, no tau search: a tau of 0.5), the graph given: the fit
    # then runs the training loop alone, which is what is timed
    "facet": lambda size, device: {"preset": size["facet_preset"], "val_fraction": 0.0, "tau": 0.5,
                                   "device": str(device), **size["facet_overrides"]},
    "clusformer": lambda size, device: {"preset": size["clusformer_preset"], "val_fraction": 0.0, "tau": 0.5,
                                        "device": str(device), **size["clusformer_overrides"]},
}
BUDGET_FIELD = {"facet": "max_train_pivots", "clusformer": "max_train_centres"}
SECONDS_FIELD = {"facet": "train_seconds", "clusformer": "seconds"}


def graph_depth(method) -> int:
    """Neighbours (self included) a method's fit_predict reads of the kNN graph."""
    from clustering.pair_stats import STAT_NEIGHBOURS

    cfg = method.config
    if method.name == "facet":
        count = max(cfg.hop1, cfg.hop2)
    else:
        count = cfg.k - 1
    return max(count, STAT_NEIGHBOURS if cfg.pair_stats else 0) + 1


def _fit(name: str, size: dict, device: torch.device, work: Path) -> tuple[object, list[dict], dict]:
    """The method fitted for one warm-up epoch and one timed epoch of ``train_steps`` steps; its history
    and the figures of the timed epoch. The model is saved in the work folder for ``cluster_e2e``."""
    from clustering.base import make_method

    features, labels = _labelled(size, work)
    probe = make_method(name, **FIT_PARAMS[name](size, device))
    batch = probe.config.batch_size
    paper_epochs = probe.config.epochs
    method = make_method(name, **FIT_PARAMS[name](size, device), epochs=2,
                         **{BUDGET_FIELD[name]: size["train_steps"] * batch})
    graph, backend = knn_graph(features, min(graph_depth(method), len(features)), device)
    history: list[dict] = []
    reset_peak(device)
    method.fit(features, labels, graph, on_epoch=history.append)
    method.save(work / f"{name}.pt")
    step_s = history[-1][SECONDS_FIELD[name]] / size["train_steps"]
    steps_ms1m = paper_epochs * math.ceil(MS1M_TRAIN_PIVOTS / batch)
    figures = {
        "rows": len(features), "batch": batch, "steps_timed": size["train_steps"], "step_ms": 1e3 * step_s,
        "paper_epochs": paper_epochs, "ms1m_steps": steps_ms1m,
        "ms1m_hours_extrapolated": steps_ms1m * step_s / 3600,
        # pivots per epoch that keep the paper's epochs within the budget at this step time (validation
        # after each epoch not counted)
        f"{BUDGET_FIELD[name]}_for_{BUDGET_HOURS:g}h": int(BUDGET_HOURS * 3600 / step_s / paper_epochs) * batch,
        "loss_finite": all(math.isfinite(row["loss"]) for row in history), "knn_backend": backend,
        "peak_gpu_mib": peak_gpu_mib(device),
    }
    return method, history, figures


def stage_facet_train(size: dict, device: torch.device, work: Path) -> dict:
    return _fit("facet", size, device, work)[2]


def stage_clusformer_train(size: dict, device: torch.device, work: Path) -> dict:
    return _fit("clusformer", size, device, work)[2]


def _trained(name: str, size: dict, device: torch.device, work: Path, **changes: object):
    """The short fit's method (loaded from the work folder when ``*_train`` ran, else fitted now), with
    ``changes`` to its settings after training (partition, memory maps)."""
    from clustering.clusformer import Clusformer
    from clustering.facet import FaceT

    path = work / f"{name}.pt"
    if path.is_file():
        method = {"facet": FaceT, "clusformer": Clusformer}[name].load(path, device=str(device))
    else:
        method = _fit(name, size, device, work)[0]
    if changes:
        config = method.config
        method.config = config.replace(**changes) if hasattr(config, "replace") else config.with_updates(**changes)
    return method


def stage_cluster_e2e(size: dict, device: torch.device, work: Path, method_name: str) -> dict:
    """kNN + fit_predict of the generated unlabelled rows: seconds end to end (the fit is not counted)."""
    from clustering.metrics import bcubed_scores, pairwise_scores

    name, _, partition = method_name.partition("+")
    method = _trained(name, size, device, work, **({"partition": partition} if partition else {}))
    features_path, truth = _unlabelled(size, work)
    features = np.load(features_path)
    reset_peak(device)
    synchronize(device)
    started = time.perf_counter()
    graph, backend = knn_graph(features, graph_depth(method), device)
    synchronize(device)
    knn_s = time.perf_counter() - started
    labels = method.fit_predict(features, graph)
    seconds = time.perf_counter() - started
    return {"method": method_name, "rows": len(features), "knn_k": graph.k, "knn_backend": backend,
            "knn_s": knn_s, "inference_links_partition_s": seconds - knn_s, "e2e_s": seconds,
            "clusters": int(len(np.unique(labels[labels >= 0]))),
            "pairwise_f": pairwise_scores(truth, labels)[2], "bcubed_f": bcubed_scores(truth, labels)[2],
            "peak_gpu_mib": peak_gpu_mib(device)}


def stage_cluster_e2e_infomap(size: dict, device: torch.device, work: Path, method_name: str) -> dict:
    """``stage_cluster_e2e`` with the method's partition set to Infomap."""
    return stage_cluster_e2e(size, device, work, f"{method_name}+infomap")


def stage_facet_memmap(size: dict, device: torch.device, work: Path) -> dict:
    """FaceT's fit_predict on ``memmap_rows`` rows, features in memory and on the device, then read
    from a memory map with the enhanced features in a disk memory map (``memmap_bytes=0``). The
    in-memory pass runs twice and the second is timed (the first pays for the kernels' first calls)."""
    features_path, _ = _unlabelled(size, work)
    mapped = np.load(features_path, mmap_mode="r")[: size["memmap_rows"]]
    in_memory = np.ascontiguousarray(mapped)
    figures: dict = {"rows": len(in_memory)}
    labels = {}
    graph = None
    memmap = {"memmap_bytes": 0, "work_dir": str(work / "facet_memmap")}
    for mode, features, changes in (("warm_up", in_memory, {}), ("in_memory", in_memory, {}),
                                    ("memmap", mapped, memmap)):
        method = _trained("facet", size, device, work, **changes)
        if graph is None:
            graph, figures["knn_backend"] = knn_graph(in_memory, graph_depth(method), device)
        synchronize(device)
        started = time.perf_counter()
        labels[mode] = method.fit_predict(features, graph)
        synchronize(device)
        figures[f"{mode}_nodes_per_s"] = len(in_memory) / (time.perf_counter() - started)
    del figures["warm_up_nodes_per_s"]
    figures["slowdown"] = figures["in_memory_nodes_per_s"] / figures["memmap_nodes_per_s"]
    figures["same_labels_share"] = float((labels["in_memory"] == labels["memmap"]).mean())
    return figures


def stage_knn_ivf(size: dict, device: torch.device, work: Path) -> dict:
    """``build_knn`` by IVF (GPU faiss on CUDA) of ``ivf_rows`` rows; recall@k of ``ivf_queries`` rows
    against an exact search of the same rows (torch, on the device)."""
    from clustering.knn import build_knn
    from semiface.faiss_backend import knn_backend

    backend = knn_backend(str(device))
    if backend == "torch-cuda":
        raise Skipped("no working GPU faiss importable (kNN on CUDA runs on torch, exact)")
    require("faiss")
    features_path, _ = feature_set(work, "ivf", size["ivf_rows"], seed=3)
    features = np.load(features_path)
    k = size["ivf_k"]
    synchronize(device)
    started = time.perf_counter()
    graph = build_knn(features, k, exact_threshold=1, device=str(device))
    seconds = time.perf_counter() - started
    queries = np.random.default_rng(0).choice(len(features), size["ivf_queries"], replace=False)
    exact = exact_neighbours(features, queries, k, device)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(graph.nbrs[queries], exact, strict=True)])
    return {"rows": len(features), "k": k, "backend": backend, "seconds": seconds,
            "queries": len(queries), "recall": float(recall)}


def exact_neighbours(features: np.ndarray, queries: np.ndarray, k: int, device: torch.device,
                     chunk: int = 32_768) -> np.ndarray:
    """Exact top-k ids (by inner product of the unit rows) of the ``queries`` rows among all rows.
    Written here: ``clustering.torch_knn`` searches every row against every row, this needs a few."""
    query = torch.as_tensor(features[queries], device=device)
    best_sims = torch.full((len(queries), k), -torch.inf, device=device)
    best_ids = torch.zeros((len(queries), k), dtype=torch.int64, device=device)
    for start in range(0, len(features), chunk):
        base = torch.as_tensor(features[start : start + chunk], device=device)
        sims = torch.cat([best_sims, query @ base.T], dim=1)
        ids = torch.cat([best_ids, torch.arange(start, start + len(base), device=device).expand(len(queries), -1)], 1)
        best_sims, order = sims.topk(k, dim=1)
        best_ids = ids.gather(1, order)
    return best_ids.cpu().numpy()
