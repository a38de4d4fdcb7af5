"""IR-ResNet trunks (``backbone.iresnet``): IR-50's shapes and size, the timm registry, bf16 + channels_last,
training steps, exact resume and DDP with an IR trunk, and the GMACs counter (CPU, small sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import backbone.train_cli as train_cli
from backbone.checkpoint import load_checkpoint
from backbone.data.demo_faces import DemoConfig, generate_demo_dataset, render_identity_image
from backbone.distributed import setup_distributed
from backbone.extract import embed_with_flip, extract_features
from backbone.iresnet import DEPTHS, ImprovedResidualUnit
from backbone.macs import gmacs_per_image
from backbone.margin import MarginHead
from backbone.model import FaceEmbedder, ModelConfig
from backbone.steps import MarginModel, make_optimizer, train_step
from backbone.train import train_backbone
from backbone.train_config import TrainConfig
from semiface.errors import ConfigError
from semiface.manifest import read_manifest

CPU = torch.device("cpu")
# The short runs: 8 identities x 8 demo faces of 32 px, iresnet18 at 16 px (a 1x1 final map), batch 16, 2 epochs.
SHORT = TrainConfig(trunk="iresnet18", image_size=16, s=16.0, m=0.2, schedule="poly", epochs=2, batch_size=16,
                    aug_strength=0.2, num_workers=0, device="cpu", verbose=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _faces(identities: int, per_identity: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Demo faces as the model takes them ([N, 3, size, size] in [-1, 1]) and their identity labels."""
    config = DemoConfig(image_size=size, seed=7)
    images = [render_identity_image(config, i, j) for i in range(identities) for j in range(per_identity)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return batch, torch.arange(identities).repeat_interleave(per_identity)


def _units(embedder: FaceEmbedder) -> list[int]:
    return [sum(isinstance(m, ImprovedResidualUnit) for m in stage.modules()) for stage in embedder.trunk.stages]


def test_iresnet50_keeps_a_7x7_map_at_112px_and_gives_unit_256d_embeddings():
    torch.manual_seed(0)
    embedder = FaceEmbedder(ModelConfig("iresnet50", 112)).eval()
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.inference_mode():
        assert embedder.trunk.forward_features(images).shape == (2, 512, 7, 7)
        features = embed_with_flip(embedder, images)
    assert _units(embedder) == [3, 4, 14, 3] and embedder.unused_trunk_parameters == []
    assert features.shape == (2, 256) and torch.allclose(features.norm(dim=1), torch.ones(2), atol=1e-6)
    assert (features[0] - features[1]).abs().max() > 1e-3
    # with the 512-d output layer of insightface (BN2d, FC 512 x 7 x 7 -> 512, BN1d) IR-50 has its 43.6M parameters
    trunk = sum(p.numel() for p in embedder.trunk.parameters())
    assert (trunk + 2 * 512 + 512 * 7 * 7 * 512 + 2 * 512) / 1e6 == pytest.approx(43.6, abs=0.05)


def test_every_depth_is_a_timm_model_and_a_trunk_by_name():
    for name, depths in DEPTHS.items():
        assert timm.is_model(name) and TrainConfig(trunk=name).model_config().trunk == name
        trunk = timm.create_model(name, num_classes=0)
        assert [len(stage) for stage in trunk.stages] == list(depths)
    classifier = timm.create_model("iresnet18", num_classes=7).eval()
    with torch.no_grad():
        assert classifier(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
        assert classifier.forward_head(classifier.forward_features(torch.zeros(2, 3, 32, 32)), pre_logits=True).shape \
            == (2, 512)
    assert classifier.pretrained_cfg["input_size"] == (3, 112, 112)
    with pytest.raises(RuntimeError, match="no pretrained weights"):
        timm.create_model("iresnet50", pretrained=True)
    with pytest.raises(ConfigError, match=r"'iresnet5O' is not a timm model name nor one of \['iresnet18'"):
        TrainConfig(trunk="iresnet5O")  # the flow and the train CLI build their TrainConfig first: fail fast


def test_bf16_autocast_with_channels_last_trains_and_embeds_like_float32():
    torch.manual_seed(0)
    model = MarginModel(FaceEmbedder(ModelConfig("iresnet18", 32)), MarginHead(256, 4, s=16.0, m=0.2))
    model = model.to(memory_format=torch.channels_last)
    images, labels = _faces(4, 2, 32)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(images, labels, torch.ones(8))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    embedder = model.embedder.eval()
    with torch.inference_mode():
        plain, bf16 = embed_with_flip(embedder, images), embed_with_flip(embedder, images, torch.bfloat16)
    assert bf16.dtype == torch.float32 and (plain * bf16).sum(dim=1).min() > 0.99


def test_iresnet50_training_steps_lower_the_loss():
    """The real training step (ArcFace s 64, m 0.5, SGD lr 0.1) on 16 demo faces of 4 people, IR-50 at 32 px."""
    torch.manual_seed(0)
    model = MarginModel(FaceEmbedder(ModelConfig("iresnet50", 32)), MarginHead(256, 4)).train()
    optimizer = make_optimizer(TrainConfig(trunk="iresnet50", image_size=32), model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    images, labels = _faces(4, 4, 32)
    losses = [train_step(model, optimizer, scaler, (images, labels, torch.ones(16)), CPU, None, 5.0)
              for _ in range(4)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "faces", DemoConfig(
        n_labelled_ids=8, n_unlabelled_ids=0, n_probe_ids=0, n_distractor_ids=0, images_per_id=8, image_size=32,
        difficulty=0.3, seed=3))


def test_kill_and_resume_an_iresnet_run_gives_the_command_lines_uninterrupted_weights(demo, tmp_path,
                                                                                    killed_after_steps):
    settings = {"trunk": "iresnet18", "image_size": 16, "s": 16.0, "m": 0.2, "schedule": "poly", "epochs": 2,
                "batch_size": 16, "aug_strength": 0.2, "num_workers": 0, "device": "cpu", "verbose": "false"}
    argv = ["--manifest", str(demo), "--image-root", str(demo.parent), "--run-dir", str(tmp_path / "straight")]
    assert train_cli.main([*argv, *(a for k, v in settings.items() for a in ("--set", f"{k}={v}"))]) == 0
    straight = tmp_path / "straight" / "model.pt"
    assert load_checkpoint(straight)["train_config"] == SHORT.to_dict()

    with killed_after_steps(6):  # epoch 1 = steps 0-3 done and checkpointed; die mid-way through epoch 2
        train_backbone(demo, demo.parent, tmp_path / "resumed", SHORT)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = train_backbone(demo, demo.parent, tmp_path / "resumed", SHORT)

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert [e["loss"] for e in a["history"]] == [e["loss"] for e in b["history"]]
    assert b["history"][1]["loss"] < b["history"][0]["loss"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert any(name.startswith("trunk.stages.3.") for name in b["model"])  # the IR trunk's weights, all equal
    features = np.load(extract_features(resumed, demo, demo.parent, tmp_path / "features.npy", device="cpu"))
    assert features.shape == (len(read_manifest(demo)), 256)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def _ddp_model() -> MarginModel:
    torch.manual_seed(0)
    return MarginModel(FaceEmbedder(ModelConfig("iresnet18", 16, 32)), MarginHead(32, 4, s=16.0, m=0.2))


def _ddp_shards() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    images, labels = _faces(4, 2, 16)
    return [(images[i::2], labels[i::2], torch.ones(4)) for i in (0, 1)]


def _ddp_worker(rank: int, out_dir: str) -> None:
    """Two real training steps under DistributedDataParallel; the gradients of the first and the final weights."""
    _, device = setup_distributed("cpu")
    model = _ddp_model()
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(SHORT, ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train_step(ddp, optimizer, scaler, _ddp_shards()[rank], device, None, 5.0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    second = train_step(ddp, optimizer, scaler, _ddp_shards()[rank], device, None, 5.0)
    torch.save({"losses": [loss, second], "grads": grads,
                "params": {n: p.detach().clone() for n, p in model.named_parameters()}}, Path(out_dir) / f"{rank}.pt")
    dist.destroy_process_group()


def test_ddp_with_an_iresnet_trunk_matches_single_process_gradients(tmp_path, run_ddp_workers):
    run_ddp_workers(__file__, "_ddp_worker", str(tmp_path))
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    # Single process, the same shards, each through the model on its own (each DDP rank normalises its
    # shard with its own BatchNorm statistics), gradients averaged and clipped: what DDP's all-reduce gives.
    reference = _ddp_model()
    losses = []
    for images, labels, weights in _ddp_shards():
        loss = reference(images, labels, weights) / 2
        loss.backward()
        losses.append(2 * loss.item())
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 5.0)
    prelu = [n for n, _ in reference.named_parameters() if n.endswith("branch.3.weight")]
    assert prelu  # the PReLU slopes are trained (and all-reduced) too
    for rank in ranks:
        assert rank["losses"][0] == pytest.approx(sum(losses) / 2, rel=1e-5)
        assert rank["losses"][1] < rank["losses"][0]
        for name, param in reference.named_parameters():
            torch.testing.assert_close(rank["grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name in ranks[0]["params"]:  # identical weights on both ranks after two steps
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name


def test_gmacs_per_image_of_the_two_resnet50s_at_112px():
    resnet50, iresnet50 = (gmacs_per_image(ModelConfig(trunk, 112)) for trunk in ("resnet50", "iresnet50"))
    # counted: 1.08 and 6.30 (the ImageNet stem leaves a 4x4 final map, IR-50 keeps 7x7)
    assert 1.0 < resnet50 < 1.2 and 6.2 < iresnet50 < 6.4
    assert 5.5 < iresnet50 / resnet50 < 6.0
    # every layer of the IR trunk and the flatten head scales with the pixel count
    assert gmacs_per_image(ModelConfig("iresnet18", 128)) == pytest.approx(
        4 * gmacs_per_image(ModelConfig("iresnet18", 64)), rel=1e-3)
