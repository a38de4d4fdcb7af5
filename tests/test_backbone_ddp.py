"""DDP: two gloo processes run the real training step and match single-process gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from backbone.distributed import setup_distributed
from backbone.margin import MarginHead
from backbone.model import FaceEmbedder, ModelConfig
from backbone.steps import MarginModel, make_optimizer, train_step
from backbone.train_config import TrainConfig

GRAD_CLIP = 5.0


def _tiny_model() -> MarginModel:
    torch.manual_seed(0)
    return MarginModel(FaceEmbedder(ModelConfig("test_resnet", 32, 16)), MarginHead(16, 5))


def _shards() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 5, (8,), generator=generator)
    weights = torch.rand(8, generator=generator) + 0.5
    return [(images[i : i + 4], labels[i : i + 4], weights[i : i + 4]) for i in (0, 4)]


def _worker(rank: int, out_dir: str) -> None:
    world, device = setup_distributed("cpu")
    assert (world.rank, world.world_size, world.owns_group) == (rank, 2, True)
    model = _tiny_model()
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(TrainConfig(trunk="test_resnet", image_size=32), ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train_step(ddp, optimizer, scaler, _shards()[rank], device, None, GRAD_CLIP)
    torch.save({"loss": loss, "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                "params": {n: p.detach().clone() for n, p in model.named_parameters()}},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()



def _unused_parameter_worker(rank: int, out_dir: str) -> None:
    """Two DDP steps with a trunk whose forward_features leaves parameters unused (mobilenetv3's conv_head)."""
    world, device = setup_distributed("cpu")
    torch.manual_seed(0)
    embedder = FaceEmbedder(ModelConfig("mobilenetv3_small_050", 32, 16))
    assert embedder.unused_trunk_parameters == ["conv_head.weight", "conv_head.bias"]
    model = MarginModel(embedder, MarginHead(16, 5))
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(TrainConfig(trunk="mobilenetv3_small_050", image_size=32), ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [train_step(ddp, optimizer, scaler, _shards()[rank], device, None, GRAD_CLIP) for _ in range(2)]
    torch.save({"losses": losses}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_trains_a_trunk_with_unused_parameters(tmp_path, run_ddp_workers):
    """Without freezing the parameters forward never uses, DDP fails at the second step (it waits for
    their gradients); frozen at model build, both steps run on both ranks."""
    run_ddp_workers(__file__, "_unused_parameter_worker", str(tmp_path))
    for rank in (0, 1):
        losses = torch.load(tmp_path / f"rank{rank}.pt")["losses"]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_ddp_step_matches_single_process_gradients(tmp_path, run_ddp_workers):
    # the forked ranks run single-threaded, as DataLoader workers do
    run_ddp_workers(__file__, "_worker", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    # Single process, the same two shards. Without SyncBatchNorm (no CPU kernel) each DDP rank
    # normalises its shard with its own batch statistics, so the single-process reference runs
    # each shard through the model separately and averages: what DDP's all-reduce must equal.
    # One thread like the ranks: conv gradients summed in another order differ by ~1e-5 relative.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = _tiny_model()
        losses = []
        for images, labels, weights in _shards():
            loss = reference(images, labels, weights) / 2
            loss.backward()
            losses.append(2 * loss.item())
        torch.nn.utils.clip_grad_norm_(reference.parameters(), GRAD_CLIP)
    finally:
        torch.set_num_threads(threads)

    for rank in ranks:
        assert rank["loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)
        for name, param in reference.named_parameters():
            torch.testing.assert_close(rank["grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name in ranks[0]["params"]:  # identical weights on both ranks after the step
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
    changed = [n for n, p in reference.named_parameters() if not torch.equal(ranks[0]["params"][n], p.detach())]
    assert changed  # the step did update the weights


def _train_worker(rank: int, manifest: str, run_dir: str, out_dir: str) -> None:
    from backbone.train import train_backbone

    config = TrainConfig(trunk="test_resnet", image_size=32, embedding_dim=16, epochs=2, batch_size=16,
                         num_workers=0, device="cpu", verbose=False)
    epochs: list[dict] = []
    model = train_backbone(Path(manifest), Path(manifest).parent, Path(run_dir), config, progress=epochs.append)
    torch.save({"model": str(model), "epochs": epochs, "group_left": not dist.is_initialized()},
               Path(out_dir) / f"train{rank}.pt")


def test_train_backbone_under_two_processes_shards_the_data_and_only_rank0_writes(tmp_path, run_ddp_workers):
    from backbone.checkpoint import load_checkpoint
    from backbone.data.demo_faces import DemoConfig, generate_demo_dataset

    demo = DemoConfig(n_labelled_ids=4, n_unlabelled_ids=0, n_probe_ids=0, n_distractor_ids=0, images_per_id=8,
                      image_size=32)
    manifest = generate_demo_dataset(tmp_path / "faces", demo)
    run_ddp_workers(__file__, "_train_worker", str(manifest), str(tmp_path / "run"), str(tmp_path))
    ranks = [torch.load(tmp_path / f"train{r}.pt") for r in (0, 1)]
    assert ranks[0]["model"] == ranks[1]["model"] == str(tmp_path / "run" / "model.pt")
    assert all(r["group_left"] for r in ranks)  # the process group it created is destroyed again
    assert [e["epoch"] for e in ranks[0]["epochs"]] == [1, 2] and ranks[1]["epochs"] == []  # rank 0 reports
    payload = load_checkpoint(tmp_path / "run" / "model.pt")
    # 32 images, global batch 16 = 8 per process: 2 steps an epoch on each process
    assert (payload["step"], payload["num_classes"], payload["finished"]) == (4, 4, True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.json", "model.pt", "run.json"]


def _class_means(manifest: str, world) -> tuple[torch.Tensor, int]:
    """Class means under a seeded tiny embedder, and how many images this process embedded."""
    from backbone.head_init import class_mean_embeddings
    from backbone.training_rows import select_training_rows
    from semiface.manifest import read_manifest

    torch.manual_seed(0)
    embedder = FaceEmbedder(ModelConfig("test_resnet", 32, 16))
    seen = []
    embedder.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
    rows = select_training_rows(read_manifest(Path(manifest)), manifest)
    rows.weights[::3] = 0.5  # the loss weights count
    centres = class_mean_embeddings(embedder, rows, Path(manifest).parent, None, 32, torch.device("cpu"),
                                    batch_size=4, world=world)
    return centres, sum(seen) // 2  # each forward embeds the images and their mirror images


def _class_means_worker(rank: int, manifest: str, out_dir: str) -> None:
    world, _ = setup_distributed("cpu")
    centres, embedded = _class_means(manifest, world)
    torch.save({"centres": centres, "embedded": embedded}, Path(out_dir) / f"means{rank}.pt")
    dist.destroy_process_group()


def test_imprinting_under_ddp_embeds_each_image_once_and_every_rank_gets_the_full_means(tmp_path, run_ddp_workers):
    from backbone.data.demo_faces import DemoConfig, generate_demo_dataset
    from backbone.distributed import Distributed

    demo = DemoConfig(n_labelled_ids=4, n_unlabelled_ids=0, n_probe_ids=0, n_distractor_ids=0, images_per_id=5,
                      image_size=32)
    manifest = str(generate_demo_dataset(tmp_path / "faces", demo))
    run_ddp_workers(__file__, "_class_means_worker", manifest, str(tmp_path))
    ranks = [torch.load(tmp_path / f"means{r}.pt") for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the ranks
    try:
        single, embedded = _class_means(manifest, Distributed())
    finally:
        torch.set_num_threads(threads)
    assert embedded == 20 and [r["embedded"] for r in ranks] == [10, 10]  # 20 images, half on each rank
    assert single.shape == (4, 16) and torch.allclose(single.norm(dim=1), torch.ones(4))
    for rank in ranks:
        torch.testing.assert_close(rank["centres"], single, rtol=1e-5, atol=1e-6)
