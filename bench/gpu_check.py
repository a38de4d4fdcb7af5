"""One script that measures every GPU path of the pipeline on one GPU, stage by stage.

Stages (each in its own subprocess, so one failure or hang loses one stage and no more):

* ``train``: ResNet50 at 112x112, ArcFace head, the real training step (``backbone.steps``; bf16
  autocast and channels_last on CUDA): img/s and peak memory;
* ``extract``: the real extraction step (flip TTA, ``backbone.extract.embed_with_flip``): img/s;
* ``knn``: the exact kNN of 584K x 256 at k = 80 (``clustering.knn.build_knn``: GPU faiss when a
  working build is installed, else the exact torch kNN): seconds;
* ``facet`` / ``clusformer``: inference of each method at its paper preset (untrained weights:
  the cost does not depend on them) over 100K generated MS1M-like features: nodes/s, and the
  seconds at 584K extrapolated linearly (the work per node is fixed by hop1 / k);
* ``identification``: 3,530 probes against 1M distractors (``recognition_eval``): seconds;
* ``ddp``: two ranks over gloo on one device, the real training step under
  DistributedDataParallel: seconds per step, and whether both ranks hold the same weights after;
* ``parity``: the device's answers against the CPU's on the same inputs and weights: extraction
  (bf16 on CUDA) cosine to the float32 CPU embeddings, kNN neighbour recall against the exact CPU
  search, identification CMC, FaceT link probabilities, and a training run that must fit one batch.

    PYTHONPATH=. python bench/gpu_check.py [--device auto] [--stages train knn ...] [--tiny]

``--tiny --device cpu`` runs every stage at toy sizes in well under a minute (the test suite does).
Imports are per stage: a machine with torch, timm, numpy and psutil runs every stage (no prefect,
albumentations, faiss or infomap needed). Prints a table and writes bench/results/gpu_check.json
(``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
STAGES = ("train", "extract", "knn", "facet", "clusformer", "identification", "ddp", "parity")
TARGET_ROWS = 584_000  # the unlabelled part of MS1M in the learn-to-cluster protocol
# Sizes of the real check and of the toy one (--tiny).
SIZES = {
    "full": {
        "trunk": "resnet50", "image_size": 112, "batch": 512, "classes": 8_500, "steps": 20, "warmup": 3,
        "knn_rows": TARGET_ROWS, "knn_k": 80, "cluster_rows": 100_000, "facet_preset": "paper", "facet_hop1": 150,
        "clusformer_preset": "paper", "clusformer_k": 64, "probes": 3_530, "distractors": 1_000_000, "ddp_batch": 128, "ddp_steps": 5,
        "parity_rows": 20_000, "parity_batch": 32, "fit_steps": 30, "stage_timeout": 240,
    },
    "tiny": {
        "trunk": "test_resnet", "image_size": 32, "batch": 8, "classes": 20, "steps": 2, "warmup": 1,
        "knn_rows": 2_000, "knn_k": 10, "cluster_rows": 600, "facet_preset": "demo", "facet_hop1": 8,
        "clusformer_preset": "small", "clusformer_k": 8, "probes": 40, "distractors": 2_000, "ddp_batch": 8, "ddp_steps": 2,
        "parity_rows": 1_000, "parity_batch": 4, "fit_steps": 15, "stage_timeout": 120,
    },
}
# Targets on one H100 (issue 14); checked only for a full run on CUDA.
TARGETS = {
    "train_img_per_s": (">=", 2_500), "knn_seconds": ("<=", 60), "facet_seconds_584k": ("<=", 120),
    "clusformer_seconds_584k": ("<=", 120), "identification_seconds": ("<=", 30),
    "parity_extract_min_cosine": (">=", 0.99), "parity_knn_recall": (">=", 0.999),
    "parity_cmc_max_diff": ("<=", 0.01), "parity_facet_max_diff": ("<=", 0.05), "parity_fit_loss_ratio": ("<=", 0.5),
}


# ---------------------------------------------------------------------------------------------
# Stages: each runs in a child process and returns a dict of figures.


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
    return {"train_img_per_s": size["batch"] * size["steps"] / seconds, "train_batch": size["batch"],
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
    return {"extract_img_per_s": size["batch"] * size["steps"] / seconds, "extract_dim": int(out.shape[1]),
            "extract_peak_gpu_mib": _gpu_peak_mib(device)}


def _random_unit(rows: int, dim: int = 256, seed: int = 0):
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def stage_knn(size: dict, device) -> dict:
    from clustering.knn import build_knn
    from semiface.faiss_backend import knn_backend

    features = _random_unit(size["knn_rows"])
    spec = str(device)
    started = time.perf_counter()
    graph = build_knn(features, size["knn_k"], exact_threshold=size["knn_rows"] + 1, device=spec)
    seconds = time.perf_counter() - started
    self_first = float((graph.nbrs[:, 0] == range(graph.n)).mean())
    return {"knn_seconds": seconds, "knn_rows": graph.n, "knn_k": graph.k, "knn_backend": knn_backend(spec),
            "knn_self_first": self_first, "knn_peak_gpu_mib": _gpu_peak_mib(device)}


def _cluster_features(size: dict):
    from clustering.benchmark_features import generate_benchmark_features

    # ~18.6 images per identity on average: ask for a few more identities than needed, keep the rows asked for
    features, _ = generate_benchmark_features(max(2, round(size["cluster_rows"] / 16)), seed=0)
    return features[: size["cluster_rows"]]


def stage_facet(size: dict, device) -> dict:
    import torch

    from clustering.facet import FaceTConfig, FaceTModel
    from clustering.facet.infer import link_probabilities
    from clustering.facet.neighbours import neighbour_table
    from clustering.knn import build_knn
    from clustering.pair_stats import STAT_NEIGHBOURS, NeighbourhoodIndex

    cfg = FaceTConfig.preset(size["facet_preset"], hop1=size["facet_hop1"], device=str(device))
    features = _cluster_features(size)
    count = max(cfg.hop1, cfg.hop2)
    graph = build_knn(features, min(max(count, STAT_NEIGHBOURS) + 1, len(features)), device=str(device))
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
            "facet_hop1": cfg.hop1, "facet_probs_finite": bool(torch.isfinite(torch.as_tensor(probs)).all()),
            "facet_peak_gpu_mib": _gpu_peak_mib(device)}


def stage_clusformer(size: dict, device) -> dict:
    import numpy as np
    import torch

    from clustering.clusformer import ClusformerConfig, ClusformerNet
    from clustering.clusformer.training import predict_sequences
    from clustering.knn import build_knn
    from clustering.pair_stats import STAT_NEIGHBOURS

    cfg = ClusformerConfig.from_preset(size["clusformer_preset"], k=size["clusformer_k"], device=str(device))
    features = _cluster_features(size)
    graph = build_knn(features, min(max(cfg.k, STAT_NEIGHBOURS + 1), len(features)), device=str(device))
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
    from clustering.facet import FaceTConfig, FaceTModel
    from clustering.facet.infer import link_probabilities
    from clustering.facet.neighbours import neighbour_table
    from clustering.knn import build_knn
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
    found = build_knn(features, k, device=str(device)).nbrs
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
    graph = build_knn(clustered, max(cfg.hop1, cfg.hop2, STAT_NEIGHBOURS) + 1, device=str(device))  # no faiss needed
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


STAGE_FUNCTIONS = {name: globals()[f"stage_{name}"] for name in STAGES}


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per stage, a table, a JSON file.


def run_stage(name: str, device: str, tiny: bool, timeout: float) -> dict:
    """Run one stage in a fresh interpreter; its figures, or ``error`` with the reason."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stage.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--device", device,
                   "--child-out", str(out)] + (["--tiny"] if tiny else [])
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"stage": name, "status": f"timeout after {timeout:.0f} s", "wall_s": time.perf_counter() - started}
        wall = time.perf_counter() - started
        if done.returncode != 0 or not out.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            return {"stage": name, "status": f"failed (exit {done.returncode}): {tail}", "wall_s": wall}
        return {"stage": name, "status": "ok", "wall_s": wall, **json.loads(out.read_text())}


def verdicts(figures: dict, checked: bool) -> list[dict]:
    """One row per figure with a target: value, target, and pass/fail (``-`` when not checked)."""
    rows = []
    for key, (op, target) in TARGETS.items():
        value = figures.get(key)
        if value is None:
            verdict = "missing"
        elif not checked:
            verdict = "-"
        else:
            verdict = "pass" if (value >= target if op == ">=" else value <= target) else "FAIL"
        rows.append({"figure": key, "value": value, "target": f"{op} {target:,}", "verdict": verdict})
    return rows


def format_table(stages: list[dict], targets: list[dict]) -> str:
    lines = [f"{'stage':<15} {'status':<8} {'wall s':>7}  figures", "-" * 100]
    for row in stages:
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("stage", "status", "wall_s"))
        status = row["status"] if row["status"] == "ok" else "FAILED"
        lines.append(f"{row['stage']:<15} {status:<8} {row['wall_s']:>7.1f}  {figures}")
        if row["status"] != "ok":
            lines.append(f"{'':<15} {row['status'][:200]}")
    lines += ["", f"{'target':<26} {'value':>12} {'target':>12}  verdict", "-" * 62]
    lines += [f"{t['figure']:<26} {_fmt(t['value']):>12} {t['target']:>12}  {t['verdict']}" for t in targets]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--tiny", action="store_true", help="toy sizes (seconds on a CPU): checks the script itself")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per stage (default: by size)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = SIZES["tiny" if args.tiny else "full"]

    if args.child:
        figures = STAGE_FUNCTIONS[args.child](size, _device(args.device))
        args.child_out.write_text(json.dumps(figures))
        return 0

    import torch

    resolved = str(_device(args.device))
    started = time.perf_counter()
    stages = []
    for name in args.stages:
        stages.append(run_stage(name, resolved, args.tiny, args.timeout or size["stage_timeout"]))
        print(f"{name}: {stages[-1]['status'][:160]} ({stages[-1]['wall_s']:.1f} s)", flush=True)
    figures = {k: v for row in stages for k, v in row.items()}
    targets = verdicts(figures, checked=not args.tiny and resolved.startswith("cuda"))
    report = {
        "device": resolved, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "tiny": args.tiny, "sizes": size, "seconds": time.perf_counter() - started,
        "stages": stages, "targets": targets, "cpu_count": os.cpu_count(),
    }
    print(format_table(stages, targets))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from semiface.atomic import save_json

    save_json(args.out, report)
    print(f"\nwritten: {args.out}")
    return 0 if all(row["status"] == "ok" for row in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
