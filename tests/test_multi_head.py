"""Multi-task retraining (``TrainConfig.heads="multi"``): a labelled-set head and a pseudo-set head on one trunk.

The retraining manifest here is hand-made from generated demo faces: classes 0..3 are labelled rows, classes
4..7 pseudo rows (split ``unlabelled``, weight 0.9), and pseudo class 7 is the same person as labelled class 0
(the overlap two heads are for).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from backbone.checkpoint import load_checkpoint, load_embedder
from backbone.data.demo_faces import DemoConfig, generate_demo_dataset
from backbone.distributed import setup_distributed
from backbone.extract import extract_features
from backbone.margin import TwoHeadMargin
from backbone.model import FaceEmbedder, ModelConfig
from backbone.steps import MarginModel, make_optimizer, train_step
from backbone.train import train_backbone
from backbone.train_config import TrainConfig
from backbone.training_rows import select_training_rows
from semiface.errors import ConfigError, DataError
from semiface.manifest import read_manifest, write_manifest

DEMO = DemoConfig(n_labelled_ids=8, n_unlabelled_ids=0, n_probe_ids=0, n_distractor_ids=0, images_per_id=8,
                  image_size=32, difficulty=0.3, seed=5)
# 64 rows, batch 16: 4 steps an epoch
MULTI = TrainConfig(trunk="test_resnet", image_size=32, embedding_dim=32, s=16.0, m=0.2, schedule="poly",
                    warmup_epochs=0.5, epochs=3, batch_size=16, aug_strength=0.2, num_workers=0, device="cpu",
                    verbose=False, heads="multi")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "faces", DEMO)


def _as_retraining_manifest(frame):
    """Classes 0..3 labelled; 4..7 pseudo (weight 0.9); the last images of class 0 become pseudo class 7."""
    frame = frame[frame["split"] == "labelled"].reset_index(drop=True)
    frame = frame[frame["label"] != 7].reset_index(drop=True)
    same_person = (frame["label"] == 0) & (frame.groupby("label").cumcount() >= 4)
    frame.loc[same_person, "label"] = 7
    pseudo = (frame["label"] >= 4).to_numpy()
    return frame.assign(split=np.where(pseudo, "unlabelled", "labelled"),
                        label_source=np.where(pseudo, "pseudo", "gt"), weight=np.where(pseudo, 0.9, 1.0))


@pytest.fixture(scope="module")
def multi_manifest(demo, tmp_path_factory) -> Path:
    return write_manifest(_as_retraining_manifest(read_manifest(demo)),
                          tmp_path_factory.mktemp("multi") / "retrain.parquet")


@pytest.fixture(scope="module")
def multi_run(multi_manifest, demo, tmp_path_factory) -> tuple[Path, list[dict]]:
    epochs: list[dict] = []
    model = train_backbone(multi_manifest, demo.parent, tmp_path_factory.mktemp("run") / "multi", MULTI,
                           progress=epochs.append)
    return model, epochs


# ----------------------------------------------------------------------------------------------
# The loss


def _hand_arcface_ce(embedding: np.ndarray, centres: np.ndarray, label: int, s: float, m: float) -> float:
    cos = centres @ embedding / (np.linalg.norm(centres, axis=1) * np.linalg.norm(embedding))
    logits = s * cos
    logits[label] = s * math.cos(math.acos(cos[label]) + m)
    return float(np.log(np.exp(logits).sum()) - logits[label])


def test_two_head_loss_is_each_heads_weighted_ce_summed_over_the_batch_size():
    torch.manual_seed(0)
    heads = TwoHeadMargin(4, 3, 2, "arcface", s=8.0, m=0.3)
    embeddings = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 2, 4, 1])  # rows 1 and 3: pseudo classes 0 and 1 (3 and 4 re-based past L=3)
    weights = torch.tensor([1.0, 0.5, 2.0, 0.25, 1.0])
    loss = heads(embeddings, labels, weights)

    e, w = embeddings.double().numpy(), weights.double().numpy()
    labelled_w, pseudo_w = (h.weight.detach().double().numpy() for h in (heads.labelled, heads.pseudo))
    expected = sum(
        w[i] * (_hand_arcface_ce(e[i], labelled_w, y, 8.0, 0.3) if y < 3 else _hand_arcface_ce(e[i], pseudo_w, y - 3,
                                                                                                8.0, 0.3))
        for i, y in enumerate(labels.tolist())
    ) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_pseudo_rows_gives_the_pseudo_head_a_zero_gradient():
    torch.manual_seed(0)
    heads = TwoHeadMargin(8, 4, 3)
    embeddings, labels = torch.randn(4, 8), torch.tensor([0, 1, 3, 3])
    loss = heads(embeddings, labels)
    assert loss.item() == pytest.approx(heads.labelled(embeddings, labels).item(), rel=1e-6)  # all 4 rows: head A
    loss.backward()
    assert heads.pseudo.weight.grad is not None and torch.count_nonzero(heads.pseudo.weight.grad) == 0
    assert torch.count_nonzero(heads.labelled.weight.grad.abs().sum(1)) == 4


def test_partial_fc_samples_within_each_head():
    torch.manual_seed(0)
    heads = TwoHeadMargin(8, 10, 20, sample_fraction=0.3)
    labels = torch.tensor([0, 0, 10, 11])  # labelled class 0; pseudo classes 0 and 1
    heads(torch.randn(4, 8), labels).backward()
    # each head scores ceil(0.3 * its classes) centres: only those get a gradient
    assert torch.count_nonzero(heads.labelled.weight.grad.abs().sum(1)) == 3
    assert torch.count_nonzero(heads.pseudo.weight.grad.abs().sum(1)) == 6
    assert heads.pseudo.weight.grad[:2].abs().sum(1).gt(0).all()  # the batch's own pseudo classes among them


# ----------------------------------------------------------------------------------------------
# Training rows


def test_multi_rows_split_the_classes_into_labelled_and_pseudo(multi_manifest):
    frame = read_manifest(multi_manifest)
    rows = select_training_rows(frame, multi_manifest, heads="multi")
    assert (rows.num_classes, rows.head_classes) == (8, (4, 4))
    assert select_training_rows(frame, multi_manifest).head_classes == (8,)
    # the ground-truth upper bound gives an unlabelled row of a labelled person its labelled class: accepted
    upper = frame.assign(split=np.where(frame.index == 0, "unlabelled", frame["split"]))
    assert select_training_rows(upper, multi_manifest, heads="multi").head_classes == (4, 4)


def _bad(multi_manifest: Path, tmp_path: Path, change) -> Path:
    return write_manifest(change(read_manifest(multi_manifest)), tmp_path / "bad.parquet")


@pytest.mark.parametrize(("change", "problem"), [
    (lambda f: f[f["split"] == "labelled"], r"no pseudo-labelled rows \(split 'unlabelled' with a label past the "
                                            r"4 labelled classes\)"),
    (lambda f: f[f["split"] == "unlabelled"].assign(label=lambda g: g["label"] - 4),
     r"no labelled rows \(split 'labelled', label >= 0\)"),
    (lambda f: f.assign(split=np.where(f["label"] == 1, "unlabelled", f["split"])),
     r"class\(es\) \[1\] .* lie inside the labelled range 0..3 but have no 'labelled' row"),
    (lambda f: f[f["label"] <= 4], r"1 pseudo class; each head needs at least 2 classes"),
])
def test_bad_two_head_layout_is_refused_naming_the_manifest(multi_manifest, demo, tmp_path, change, problem):
    bad = _bad(multi_manifest, tmp_path, change)
    with pytest.raises(DataError, match=r"bad.parquet: heads='multi': " + problem):
        train_backbone(bad, demo.parent, tmp_path / "run", MULTI)
    assert not (tmp_path / "run").exists()


def test_unknown_heads_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"TrainConfig.heads: 'double' is not one of \['single', 'multi'\]"):
        replace(MULTI, heads="double")
    assert TrainConfig.from_dict({"heads": "multi"}).heads == "multi"


# ----------------------------------------------------------------------------------------------
# Training, checkpoints, resume, extraction


def test_multi_training_lowers_the_loss_and_saves_both_heads(multi_run):
    model, epochs = multi_run
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < 0.8 * epochs[0]["loss"], [round(e["loss"], 3) for e in epochs]
    payload = load_checkpoint(model)
    assert (payload["num_classes"], payload["head_classes"], payload["finished"]) == (8, [4, 4], True)
    assert {k: tuple(v.shape) for k, v in payload["margin"].items()} == {"labelled.weight": (4, 32),
                                                                         "pseudo.weight": (4, 32)}


def test_multi_model_extracts_features(multi_run, demo, tmp_path):
    model, _ = multi_run
    features = np.load(extract_features(model, demo, demo.parent, tmp_path / "f.npy", batch_size=32, device="cpu"))
    assert features.shape == (len(read_manifest(demo)), MULTI.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert load_embedder(model).config == MULTI.model_config()


def test_multi_run_dir_is_reused_and_refuses_a_single_head_config(multi_run, multi_manifest, demo):
    model, _ = multi_run
    before = model.read_bytes()
    assert train_backbone(multi_manifest, demo.parent, model.parent, MULTI) == model
    with pytest.raises(ConfigError, match=r"heads: 'multi' there, 'single' now; head_classes: \[4, 4\] there, "
                                          r"\[8\] now"):
        train_backbone(multi_manifest, demo.parent, model.parent, replace(MULTI, heads="single"))
    assert model.read_bytes() == before


def test_a_run_dir_written_before_two_heads_existed_is_still_reused(multi_manifest, demo, tmp_path):
    single = replace(MULTI, heads="single", epochs=1)
    model = train_backbone(multi_manifest, demo.parent, tmp_path / "run", single)
    run_file = tmp_path / "run" / "run.json"
    identity = json.loads(run_file.read_text())
    del identity["head_classes"], identity["train_config"]["heads"]
    run_file.write_text(json.dumps(identity))
    before = model.read_bytes()
    assert train_backbone(multi_manifest, demo.parent, tmp_path / "run", single) == model
    with pytest.raises(ConfigError, match=r"heads: 'single' there, 'multi' now"):
        train_backbone(multi_manifest, demo.parent, tmp_path / "run", replace(single, heads="multi"))
    assert model.read_bytes() == before


def test_killed_multi_run_resumes_to_the_uninterrupted_weights(multi_run, multi_manifest, demo, tmp_path,
                                                               killed_after_steps):
    straight, _ = multi_run
    with killed_after_steps(6):  # epoch 1 = steps 0-3 done and checkpointed; die mid-way through epoch 2
        train_backbone(multi_manifest, demo.parent, tmp_path / "resumed", MULTI)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["head_classes"] == [4, 4]
    resumed = train_backbone(multi_manifest, demo.parent, tmp_path / "resumed", MULTI)

    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert [e["loss"] for e in a["history"]] == [e["loss"] for e in b["history"]]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for name in ("labelled.weight", "pseudo.weight"):
        assert torch.equal(a["margin"][name], b["margin"][name]), name


# ----------------------------------------------------------------------------------------------
# DDP: a shard without pseudo rows


def _tiny_model() -> MarginModel:
    torch.manual_seed(0)
    return MarginModel(FaceEmbedder(ModelConfig("test_resnet", 32, 16)), TwoHeadMargin(16, 3, 3))


def _shards() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 2, 1, 0, 4, 3, 5])  # rank 0: labelled rows only; rank 1: both sets
    return [(images[i : i + 4], labels[i : i + 4], torch.ones(4)) for i in (0, 4)]


def _worker(rank: int, out_dir: str) -> None:
    _, device = setup_distributed("cpu")
    model = _tiny_model()
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(TrainConfig(trunk="test_resnet", image_size=32), ddp.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    # two steps: DDP reports a parameter left without gradient at the step after
    losses = [train_step(ddp, optimizer, scaler, _shards()[rank], device, None, None) for _ in range(2)]
    torch.save({"losses": losses, "params": {n: p.detach().clone() for n, p in model.named_parameters()}},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()



def test_ddp_steps_with_a_shard_without_pseudo_rows(tmp_path, run_ddp_workers):
    run_ddp_workers(__file__, "_worker", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"] and all(math.isfinite(x) for x in ranks[0]["losses"])
    start = dict(_tiny_model().named_parameters())
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    # the pseudo head learned from rank 1's rows (gradients were all-reduced)
    assert not torch.equal(ranks[0]["params"]["head.pseudo.weight"], start["head.pseudo.weight"].detach())


def test_class_means_imprint_each_head_with_its_own_classes(multi_run, multi_manifest, demo, tmp_path):
    """head_init='class_means' from a two-head model: labelled classes 0..3 start the labelled head, 4..7 the pseudo head."""
    model, _ = multi_run
    frozen = replace(MULTI, epochs=1, lr=1e-12, init=str(model), head_init="class_means")
    payload = load_checkpoint(train_backbone(multi_manifest, demo.parent, tmp_path / "imprinted", frozen))
    features = np.load(extract_features(model, multi_manifest, demo.parent, tmp_path / "f.npy", device="cpu"))
    labels = read_manifest(multi_manifest)["label"].to_numpy()
    means = np.stack([features[labels == c].mean(0) for c in range(8)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(payload["margin"]["labelled.weight"].numpy(), means[:4], atol=1e-4)
    np.testing.assert_allclose(payload["margin"]["pseudo.weight"].numpy(), means[4:], atol=1e-4)
