"""One script that measures the pipeline's GPU work on one GPU, stage by stage: the job, and its kernels.

**Job stages** (the default): the code a run of ``semi-supervised/ms1m`` goes through, fed with real bytes
generated on the machine itself (``bench.gpu_job_data``: a RecordIO of ~20K 112-px JPEG faces drawn by
the demo-face generator, and MS1M-like features), each timed whole (``bench.gpu_job_stages``):

* ``loader``: the training loader (workers: the CPUs less two) and the device stage, no model: img/s with
  JPEGs decoded by the workers (libjpeg-turbo) and on the GPU (nvjpeg);
* ``train_e2e`` (per trunk: ``iresnet50`` and ``resnet50``, bf16 + channels_last on CUDA): RecordIO to
  training steps, both decode paths, 100 steps each: img/s, GMACs/image, the share of step time spent
  waiting for data, and the model's img/s on a batch already on the device;
* ``extract_e2e`` (per trunk): ``extract_features`` from the same RecordIO, whole call: img/s;
* ``facet_train`` / ``clusformer_train``: 200 steps at the paper presets on 100K generated labelled rows:
  step time, and the hours of the paper's schedule on MS1M's labelled part (an extrapolation);
* ``cluster_e2e`` (FaceT and Clusformer, union-find): kNN + inference + links + partition of 584K
  generated rows, with the weights of that short fit (fit time not counted); ``cluster_e2e_infomap``
  (by name: ~3 min more) the same with Infomap partitions, when ``infomap`` imports;
* ``facet_memmap``: FaceT's memory-map mode (sets beyond ~1M rows) forced at 100K, beside in-memory;
* ``knn_ivf`` (when a GPU faiss imports): IVF kNN of 1M rows, recall against exact on 20K queries.

**Kernel stages** (by name, or ``--stages all``): synthetic batches on the device, no data loading:

* ``train`` / ``extract``: the training step and flip-TTA extraction on one random batch: img/s, GMACs;
* ``knn``: exact kNN of 584K x 256 at k = 80: seconds;
* ``facet`` / ``clusformer``: inference at the paper presets (untrained) over 100K rows, extrapolated;
* ``identification``: 3,530 probes against 1M distractors: seconds;
* ``ddp``: two ranks over gloo on one device, the real step under DistributedDataParallel;
* ``parity``: the device's answers against the CPU's on the same inputs and weights.

    PYTHONPATH=. python bench/gpu_check.py [--stages all | NAME ...] [--trunk iresnet50 ...] [--work DIR] [--tiny]

Each stage runs in its own process (one failure or hang loses one stage); data is generated first, in a
stage of its own (``data``), into ``--work`` (default: a temporary folder). A stage needing a package that
does not import says ``skipped: X not importable``. Imports are per stage: torch, torchvision, timm,
numpy, pandas, pyarrow, psutil, Pillow, OpenCV and simplejpeg run every stage (no prefect, albumentations,
faiss or infomap needed). ``--tiny --device cpu`` runs every stage at toy sizes (the test suite does).
Targets are judged on a full run on CUDA only. Prints a table and writes bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
JOB_STAGES = ("loader", "train_e2e", "extract_e2e", "facet_train", "clusformer_train", "cluster_e2e",
              "facet_memmap", "knn_ivf")
KERNEL_STAGES = ("train", "extract", "knn", "facet", "clusformer", "identification", "ddp", "parity")
STAGES = JOB_STAGES + ("cluster_e2e_infomap",) + KERNEL_STAGES
# The default run is the job stages, sized for 8 min on one H100. Left out: cluster_e2e_infomap (two more
# 584K runs, each repeating the kNN and the inference: ~3 min more) and the kernel stages (train/extract:
# train_e2e's model_only figure measures the step better; knn/facet/clusformer: cluster_e2e does).
DEFAULT_STAGES = JOB_STAGES
TRUNK_STAGES = ("train_e2e", "extract_e2e")  # one run per trunk
METHOD_STAGES = ("cluster_e2e", "cluster_e2e_infomap")  # one run per clustering method
CLUSTER_METHODS = ("facet", "clusformer")
NEEDS = {  # the generated data each job stage reads (made by the ``data`` stage before it)
    "loader": {"faces"}, "train_e2e": {"faces"}, "extract_e2e": {"faces"},
    "facet_train": {"labelled"}, "clusformer_train": {"labelled"}, "cluster_e2e": {"labelled", "unlabelled"},
    "cluster_e2e_infomap": {"labelled", "unlabelled"}, "facet_memmap": {"labelled", "unlabelled"},
}
# Runs that need a package the GPU machine may lack: checked before anything else is imported, so that
# saying "skipped" costs no torch start-up.
REQUIRES = {f"cluster_e2e_infomap:{method}": "infomap" for method in CLUSTER_METHODS}
TARGET_ROWS = 584_000  # the unlabelled part of MS1M in the learn-to-cluster protocol
# Sizes of the real check and of the toy one (--tiny).
SIZES = {
    "full": {
        "trunk": "resnet50", "trunks": ["iresnet50", "resnet50"], "image_size": 112, "batch": 512, "classes": 8_500,
        "steps": 20, "warmup": 3, "knn_rows": TARGET_ROWS, "knn_k": 80, "cluster_rows": 100_000, "facet_preset": "paper",
        "facet_hop1": 150, "clusformer_preset": "paper", "clusformer_k": 64, "probes": 3_530, "distractors": 1_000_000,
        "ddp_batch": 128, "ddp_steps": 5, "parity_rows": 20_000, "parity_batch": 32, "fit_steps": 30,
        "stage_timeout": 240,
        # job stages
        "faces": 20_000, "min_workers": 1, "e2e_steps": 100, "e2e_warmup": 10, "model_only_steps": 30,
        "extract_passes": 5, "labelled_rows": 100_000, "unlabelled_rows": TARGET_ROWS, "train_steps": 200,
        "facet_overrides": {}, "clusformer_overrides": {}, "memmap_rows": 100_000,
        "ivf_rows": 1_000_000, "ivf_queries": 20_000, "ivf_k": 80,
    },
    "tiny": {
        "trunk": "test_resnet", "trunks": ["test_resnet"], "image_size": 32, "batch": 8, "classes": 20, "steps": 2,
        "warmup": 1, "knn_rows": 2_000, "knn_k": 10, "cluster_rows": 600, "facet_preset": "demo", "facet_hop1": 8,
        "clusformer_preset": "small", "clusformer_k": 8, "probes": 40, "distractors": 2_000, "ddp_batch": 8,
        "ddp_steps": 2, "parity_rows": 1_000, "parity_batch": 4, "fit_steps": 15, "stage_timeout": 120,
        "faces": 60, "min_workers": 1, "e2e_steps": 3, "e2e_warmup": 1, "model_only_steps": 2,
        "extract_passes": 2, "labelled_rows": 600, "unlabelled_rows": 900, "train_steps": 3,
        "facet_overrides": {"hop1": 8}, "clusformer_overrides": {"k": 8}, "memmap_rows": 400,
        "ivf_rows": 3_000, "ivf_queries": 200, "ivf_k": 10,
    },
}
STAGE_BUDGET_S = 90  # each stage's wall time, checked on a full CUDA run
SCRIPT_BUDGET_S = 480  # the whole script's
# (stage run, figure, op, target) on one H100; checked only for a full run on CUDA. The data path's
# figures are judged on the GPU decode path (decode="auto" takes it on CUDA); the CPU one is beside.
TARGETS = [
    ("train_e2e:resnet50", "img_per_s_device_decode", ">=", 8_000),
    ("train_e2e:iresnet50", "img_per_s_device_decode", ">=", 3_000),
    ("extract_e2e:resnet50", "img_per_s_device_decode", ">=", 15_000),
    ("cluster_e2e:facet", "e2e_s", "<=", 60),
    ("cluster_e2e:clusformer", "e2e_s", "<=", 60),
    ("facet_train", "ms1m_hours_extrapolated", "<=", 2),
    ("facet_memmap", "slowdown", "<=", 2),
    ("train", "train_img_per_s", ">=", 2_500),
    ("knn", "knn_seconds", "<=", 60),
    ("facet", "facet_seconds_584k", "<=", 120),
    ("clusformer", "clusformer_seconds_584k", "<=", 120),
    ("identification", "identification_seconds", "<=", 30),
    ("parity", "parity_extract_min_cosine", ">=", 0.99),
    ("parity", "parity_knn_recall", ">=", 0.999),
    ("parity", "parity_cmc_max_diff", "<=", 0.01),
    ("parity", "parity_facet_max_diff", "<=", 0.05),
    ("parity", "parity_fit_loss_ratio", "<=", 0.5),
]


# ---------------------------------------------------------------------------------------------
# Kernel stages: each runs in a child process and returns a dict of figures.


def _device(spec: str):
    from semiface.devices import resolve_device

    return resolve_device(spec)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _margin_model(size: dict, device):
    import torch

    from backbone.margin import MarginHead
    from backbone.model import ModelConfig, build_model
    from backbone.steps import MarginModel

    torch.manual_seed(0)
    embedder = build_model(ModelConfig(size["trunk"], size["image_size"]), device)
    return MarginModel(embedder, MarginHead(embedder.config.embedding_dim, size["classes"]).to(device))


def _batch(size: dict, batch: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size["image_size"], size["image_size"], generator=generator) * 2 - 1
    return images, torch.randint(0, size["classes"], (batch,), generator=generator), torch.ones(batch)


def _gmacs(size: dict) -> float:
    from backbone.macs import gmacs_per_image
    from backbone.model import ModelConfig

    return gmacs_per_image(ModelConfig(size["trunk"], size["image_size"]))


def stage_train(size: dict, device) -> dict:
    import torch

    from backbone.steps import make_optimizer, train_step
    from backbone.train_config import TrainConfig
    from semiface.devices import autocast_dtype

    model = _margin_model(size, device)
    amp = autocast_dtype(device)
    optimizer = make_optimizer(TrainConfig(trunk=size["trunk"], image_size=size["image_size"]), model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    data = _batch(size, size["batch"])
    model.train()
    for _ in range(size["warmup"]):
        train_step(model, optimizer, scaler, data, device, amp, 5.0)
    _synchronize(device)
    started = time.perf_counter()
    losses = [train_step(model, optimizer, scaler, data, device, amp, 5.0) for _ in range(size["steps"])]
    _synchronize(device)
    seconds = time.perf_counter() - started
    return {"train_img_per_s": size["batch"] * size["steps"] / seconds, "train_gmacs_per_image": _gmacs(size),
            "train_trunk": size["trunk"], "train_batch": size["batch"],
            "train_precision": str(amp).replace("torch.", "") if amp else "float32",
            "train_loss_finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses)),
            "train_peak_gpu_mib": _gpu_peak_mib(device)}


def stage_extract(size: dict, device) -> dict:
    import torch

    from backbone.extract import embed_with_flip
    from backbone.model import ModelConfig, build_model
    from semiface.devices import autocast_dtype

    embedder = build_model(ModelConfig(size["trunk"], size["image_size"]), device).eval()
    images, _, _ = _batch(size, size["batch"])
    amp = autocast_dtype(device)
    with torch.inference_mode():
        for _ in range(size["warmup"]):
            embed_with_flip(embedder, images, amp).cpu()
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(size["steps"]):
            out = embed_with_flip(embedder, images, amp).cpu()
        seconds = time.perf_counter() - started
    return {"extract_img_per_s": size["batch"] * size["steps"] / seconds, "extract_gmacs_per_image": _gmacs(size),
            "extract_dim": int(out.shape[1]),
            "extract_peak_gpu_mib": _gpu_peak_mib(device)}


def _random_unit(rows: int, dim: int = 256, seed: int = 0):
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def stage_knn(size: dict, device) -> dict:
    from bench.gpu_job_stages import knn_graph

    features = _random_unit(size["knn_rows"])
    started = time.perf_counter()
    graph, backend = knn_graph(features, size["knn_k"], device)
    seconds = time.perf_counter() - started
    self_first = float((graph.nbrs[:, 0] == range(graph.n)).mean())
    return {"knn_seconds": seconds, "knn_rows": graph.n, "knn_k": graph.k, "knn_backend": backend,
            "knn_self_first": self_first, "knn_peak_gpu_mib": _gpu_peak_mib(device)}


def _cluster_features(size: dict):
    from clustering.benchmark_features import generate_benchmark_features

    # ~18.6 images per identity on average: ask for a few more identities than needed, keep the rows asked for
    features, _ = generate_benchmark_features(max(2, round(size["cluster_rows"] / 16)), seed=0)
    return features[: size["cluster_rows"]]


def stage_facet(size: dict, device) -> dict:
    import numpy as np
    import torch

    from bench.gpu_job_stages import knn_graph
    from clustering.facet import FaceTConfig, FaceTModel
    from clustering.facet.infer import link_probabilities
    from clustering.facet.neighbours import neighbour_table
    from clustering.pair_stats import STAT_NEIGHBOURS, NeighbourhoodIndex

    cfg = FaceTConfig.preset(size["facet_preset"], hop1=size["facet_hop1"], device=str(device))
    features = _cluster_features(size)
    count = max(cfg.hop1, cfg.hop2)
    graph, _ = knn_graph(features, min(max(count, STAT_NEIGHBOURS) + 1, len(features)), device)
    table = neighbour_table(graph.nbrs, count)
    index = NeighbourhoodIndex.from_graph(graph, device) if cfg.pair_stats else None
    torch.manual_seed(0)
    model = FaceTModel(features.shape[1], cfg).to(device)
    started = time.perf_counter()
    probs = link_probabilities(model, features, table, cfg, device, index)
    _synchronize(device)
    seconds = time.perf_counter() - started
    rate = len(features) / seconds
    return {"facet_nodes_per_s": rate, "facet_seconds_584k": TARGET_ROWS / rate, "facet_rows": len(features),
            "facet_hop1": cfg.hop1, "facet_probs_finite": not bool(np.isnan(probs).any()),
            "facet_peak_gpu_mib": _gpu_peak_mib(device)}


def stage_clusformer(size: dict, device) -> dict:
    import numpy as np
    import torch

    from bench.gpu_job_stages import knn_graph
    from clustering.clusformer import ClusformerConfig, ClusformerNet
    from clustering.clusformer.training import predict_sequences
    from clustering.pair_stats import STAT_NEIGHBOURS

    cfg = ClusformerConfig.from_preset(size["clusformer_preset"], k=size["clusformer_k"], device=str(device))
    features = _cluster_features(size)
    graph, _ = knn_graph(features, min(max(cfg.k, STAT_NEIGHBOURS + 1), len(features)), device)
    torch.manual_seed(0)
    model = ClusformerNet(features.shape[1], cfg).to(device).eval()
    started = time.perf_counter()
    ids, scores = predict_sequences(model, features, graph, cfg, device)  # log-odds, +-inf at the centre and padding
    _synchronize(device)
    seconds = time.perf_counter() - started
    rate = len(features) / seconds
    return {"clusformer_nodes_per_s": rate, "clusformer_seconds_584k": TARGET_ROWS / rate,
            "clusformer_rows": len(features), "clusformer_k": cfg.k,
            "clusformer_probs_finite": bool(np.isfinite(scores[:, 1:][ids[:, 1:] >= 0]).all()),
            "clusformer_peak_gpu_mib": _gpu_peak_mib(device)}


def stage_identification(size: dict, device) -> dict:
    import numpy as np

    from recognition_eval.identification import identification_cmc

    per_identity = 10
    identities = np.repeat(np.arange(size["probes"] // per_identity), per_identity)
    centres = _random_unit(len(np.unique(identities)), seed=1)
    probes = centres[identities] + 0.05 * _random_unit(len(identities), seed=2)
    distractors = _random_unit(size["distractors"], seed=3)
    started = time.perf_counter()
    result = identification_cmc(probes, identities, distractors, sizes=[size["distractors"]], device=str(device))
    seconds = time.perf_counter() - started
    return {"identification_seconds": seconds, "identification_probes": result.n_probe_images,
            "identification_distractors": result.sizes[-1], "identification_rank1": result.rank(1)}


def _ddp_rank(rank: int, size: dict, device_spec: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from backbone.steps import make_optimizer, train_step
    from backbone.train_config import TrainConfig
    from semiface.devices import autocast_dtype

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    device = _device(device_spec)
    model = _margin_model(size, device)
    ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    amp = autocast_dtype(device)
    optimizer = make_optimizer(TrainConfig(trunk=size["trunk"], image_size=size["image_size"]), ddp.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    data = _batch(size, size["ddp_batch"], seed=rank)  # each rank its own shard
    train_step(ddp, optimizer, scaler, data, device, amp, 5.0)
    _synchronize(device)
    started = time.perf_counter()
    losses = [train_step(ddp, optimizer, scaler, data, device, amp, 5.0) for _ in range(size["ddp_steps"])]
    _synchronize(device)
    seconds = (time.perf_counter() - started) / size["ddp_steps"]
    flat = torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        Path(out).write_text(json.dumps({
            "ddp_seconds_per_step": seconds, "ddp_img_per_s": 2 * size["ddp_batch"] / seconds,
            "ddp_same_weights": bool(torch.equal(gathered[0], gathered[1])),
            "ddp_losses_finite": all(x == x for x in losses),
        }))
    dist.destroy_process_group()


def stage_ddp(size: dict, device) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "ddp.json")
        mp.spawn(_ddp_rank, args=(size, str(device), port, out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())


def stage_parity(size: dict, device) -> dict:
    import numpy as np
    import torch

    from backbone.extract import embed_with_flip
    from backbone.model import ModelConfig, build_model
    from backbone.steps import make_optimizer, train_step
    from backbone.train_config import TrainConfig
    from bench.gpu_job_stages import knn_graph
    from clustering.facet import FaceTConfig, FaceTModel
    from clustering.facet.infer import link_probabilities
    from clustering.facet.neighbours import neighbour_table
    from clustering.pair_stats import STAT_NEIGHBOURS, NeighbourhoodIndex
    from clustering.torch_knn import torch_exact_knn
    from recognition_eval.identification import identification_cmc
    from semiface.devices import autocast_dtype

    cpu, amp = torch.device("cpu"), autocast_dtype(device)
    # extraction: the same weights and images, float32 on the CPU against the device's precision
    torch.manual_seed(0)
    embedder = build_model(ModelConfig(size["trunk"], size["image_size"]), cpu).eval()
    images, _, _ = _batch(size, size["parity_batch"])
    with torch.inference_mode():
        reference = embed_with_flip(embedder, images)
        on_device = embed_with_flip(embedder.to(device), images, amp).cpu()
    figures = {"parity_extract_min_cosine": float((reference * on_device).sum(1).min())}

    # kNN: the pipeline's search on the device against the exact search on the CPU
    features, k = _random_unit(size["parity_rows"], dim=64, seed=4), 30
    found = knn_graph(features, k, device)[0].nbrs
    exact, _ = torch_exact_knn(features, k, cpu)
    figures["parity_knn_recall"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))

    # identification: the same probes and distractors scored on the CPU and on the device
    identities = np.repeat(np.arange(size["probes"] // 10), 10)
    probes = _random_unit(len(np.unique(identities)), seed=5)[identities] + 2.0 * _random_unit(len(identities), seed=6)
    distractors = _random_unit(min(size["distractors"], 100_000), seed=7)
    cmc = [identification_cmc(probes, identities, distractors, sizes=[len(distractors)], device=spec).cmc
           for spec in ("cpu", str(device))]
    figures["parity_cmc_max_diff"] = float(np.abs(cmc[0] - cmc[1]).max())
    figures["parity_rank1"] = float(cmc[1][0, 0])

    # FaceT: untrained seeded weights (pair statistics included), link probabilities on both
    cfg = FaceTConfig.preset("demo", hop1=20, device="cpu")
    clustered = _cluster_features({**size, "cluster_rows": size["parity_rows"] // 4})
    graph, _ = knn_graph(clustered, max(cfg.hop1, cfg.hop2, STAT_NEIGHBOURS) + 1, device)
    table = neighbour_table(graph.nbrs, max(cfg.hop1, cfg.hop2))
    torch.manual_seed(0)
    model = FaceTModel(clustered.shape[1], cfg).eval()
    probs = [np.asarray(link_probabilities(model.to(d), clustered, table, cfg, d, NeighbourhoodIndex.from_graph(graph, d)))
             for d in (cpu, device)]
    figures["parity_facet_max_diff"] = float(np.abs(probs[0] - probs[1]).max())

    # training: the real step on the device fits one small batch (loss falls to under half)
    fit_size = {**size, "classes": 8}
    margin_model = _margin_model(fit_size, device).train()
    optimizer = make_optimizer(TrainConfig(trunk=size["trunk"], image_size=size["image_size"]), margin_model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    data = _batch(fit_size, max(16, size["parity_batch"]))
    losses = [train_step(margin_model, optimizer, scaler, data, device, amp, 5.0) for _ in range(size["fit_steps"])]
    figures["parity_fit_loss_ratio"] = float(np.mean(losses[-3:]) / losses[0])
    return figures


KERNEL_FUNCTIONS = {name: globals()[f"stage_{name}"] for name in KERNEL_STAGES}


def stage_data(size: dict, work: Path, needs: set[str]) -> dict:
    """Generate what the job stages read (faces RecordIO, labelled and unlabelled features): seconds each."""
    from bench.gpu_job_data import face_record, feature_set, pool_size

    figures: dict = {"processes": pool_size()}
    for need, make in (("faces", lambda: face_record(work, size["faces"], size["image_size"])),
                       ("labelled", lambda: feature_set(work, "labelled", size["labelled_rows"], seed=1)),
                       ("unlabelled", lambda: feature_set(work, "unlabelled", size["unlabelled_rows"], seed=2))):
        if need in needs:
            started = time.perf_counter()
            make()
            figures[f"{need}_s"] = time.perf_counter() - started
    return figures


def _not_importable(module: str | None) -> str | None:
    """Why ``module`` cannot be imported here, or None when it can (or when there is none)."""
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f"{module} not importable ({exc})"
    return None


def run_child(run: str, size: dict, device, work: Path, needs: set[str]) -> dict:
    """The figures of one stage run (``name`` or ``name:parameter``) in this process."""
    from bench import gpu_job_stages as job

    name, _, parameter = run.partition(":")
    try:
        if name == "data":
            return stage_data(size, work, needs)
        if name in KERNEL_FUNCTIONS:
            return KERNEL_FUNCTIONS[name](size, device)
        function = getattr(job, f"stage_{name}")
        job_size = {**size, "steps": size["e2e_steps"], "warmup": size["e2e_warmup"]}
        return function(job_size, device, work, parameter) if parameter else function(job_size, device, work)
    except job.Skipped as exc:
        return {"skipped": str(exc)}


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per stage run, a table, a JSON file.


def stage_runs(stages: list[str], trunks: list[str]) -> list[str]:
    """The runs of the chosen stages in order: ``data`` first when a job stage reads generated data,
    one run per trunk or clustering method where a stage has them."""
    runs = ["data"] if any(NEEDS.get(name) for name in stages) else []
    for name in stages:
        if name in TRUNK_STAGES:
            runs += [f"{name}:{trunk}" for trunk in trunks]
        elif name in METHOD_STAGES:
            runs += [f"{name}:{method}" for method in CLUSTER_METHODS]
        else:
            runs.append(name)
    return runs


def run_stage(run: str, device: str, tiny: bool, timeout: float, work: Path, needs: set[str],
              trunks: list[str] | None = None) -> dict:
    """Run one stage in a fresh interpreter; its figures, or a status saying why there are none."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stage.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", run, "--device", device,
                   "--child-out", str(out), "--work", str(work), "--needs", *(sorted(needs) or ["none"])]
        command += (["--tiny"] if tiny else []) + (["--trunk", *trunks] if trunks else [])
        started, cpu_before = time.perf_counter(), _children_cpu_s()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"stage": run, "status": f"timeout after {timeout:.0f} s", "wall_s": time.perf_counter() - started}
        times = {"wall_s": time.perf_counter() - started, "cpu_s": _children_cpu_s() - cpu_before}
        if done.returncode != 0 or not out.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            return {"stage": run, "status": f"failed (exit {done.returncode}): {tail}", **times}
        figures = json.loads(out.read_text())
        if "skipped" in figures:
            return {"stage": run, "status": f"skipped: {figures['skipped']}", **times}
        return {"stage": run, "status": "ok", **times, **figures}


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (and theirs: workers, ranks) so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def verdicts(stages: list[dict], seconds: float, checked: bool) -> list[dict]:
    """One row per target whose stage ran (value, target, pass / FAIL, ``-`` when not checked), then each
    stage's wall time and the script's against their budgets."""
    rows_by_run = {row["stage"]: row for row in stages}
    out = []
    for run, key, op, target in TARGETS:
        if run not in rows_by_run:
            continue
        out.append(_verdict(f"{run} {key}", rows_by_run[run].get(key), op, target, checked))
    out += [_verdict(f"{row['stage']} wall_s", row["wall_s"], "<=", STAGE_BUDGET_S, checked)
            for row in stages if row["stage"] != "data"]
    out.append(_verdict("script seconds", seconds, "<=", SCRIPT_BUDGET_S, checked))
    return out


def _verdict(figure: str, value, op: str, target: float, checked: bool) -> dict:
    if value is None:
        verdict = "missing"
    elif not checked:
        verdict = "-"
    else:
        verdict = "pass" if (value >= target if op == ">=" else value <= target) else "FAIL"
    return {"figure": figure, "value": value, "target": f"{op} {target:,}", "verdict": verdict}


def format_table(stages: list[dict], targets: list[dict]) -> str:
    lines = [f"{'stage':<32} {'status':<8} {'wall s':>7}  figures", "-" * 110]
    for row in stages:
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("stage", "status", "wall_s"))
        status = row["status"].split(":")[0] if row["status"] != "ok" else "ok"
        lines.append(f"{row['stage']:<32} {status[:8]:<8} {row['wall_s']:>7.1f}  {figures}")
        if row["status"] != "ok":
            lines.append(f"{'':<32} {row['status'][:200]}")
    lines += ["", f"{'target':<56} {'value':>12} {'target':>12}  verdict", "-" * 92]
    lines += [f"{t['figure']:<56} {_fmt(t['value']):>12} {t['target']:>12}  {t['verdict']}" for t in targets]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--stages", nargs="+", choices=(*STAGES, "all"), default=list(DEFAULT_STAGES),
                        help="stages to run (default: the job stages + identification, ddp, parity; all: every stage)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (seconds on a CPU): checks the script itself")
    parser.add_argument("--trunk", nargs="+", default=None,
                        help="trunk(s) by name: train_e2e / extract_e2e run each (default: iresnet50 resnet50); "
                             "the kernel stages take the first (default: resnet50; test_resnet with --tiny)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder of the generated data (kept, and reused by a later run; default: temporary)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per stage (default: by size)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--needs", nargs="+", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = dict(SIZES["tiny" if args.tiny else "full"])
    if args.trunk:
        size.update(trunk=args.trunk[0], trunks=list(args.trunk))

    if args.child:
        missing = _not_importable(REQUIRES.get(args.child))
        figures = {"skipped": missing} if missing else run_child(args.child, size, _device(args.device), args.work, set(args.needs) - {"none"})
        args.child_out.write_text(json.dumps(figures))
        return 0

    import torch

    stages = list(STAGES) if "all" in args.stages else [s for s in STAGES if s in args.stages]
    resolved = str(_device(args.device))
    needs = set().union(*(NEEDS.get(name, set()) for name in stages))
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    try:
        for run in stage_runs(stages, size["trunks"]):
            rows.append(run_stage(run, resolved, args.tiny, args.timeout or size["stage_timeout"], work, needs,
                                  args.trunk))
            print(f"{run}: {rows[-1]['status'][:160]} ({rows[-1]['wall_s']:.1f} s)", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    targets = verdicts(rows, seconds, checked=not args.tiny and resolved.startswith("cuda"))
    report = {
        "device": resolved, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "tiny": args.tiny, "sizes": size, "seconds": seconds,
        "stages": rows, "targets": targets, "cpu_count": os.cpu_count(),
    }
    print(format_table(rows, targets))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from semiface.atomic import save_json

    save_json(args.out, report)
    print(f"\nwritten: {args.out}")
    return 0 if all(row["status"] == "ok" or row["status"].startswith("skipped") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
