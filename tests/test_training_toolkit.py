"""semiface.training: checkpoints with an identity, and exact RNG state round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from semiface.errors import ConfigError, DataError
from semiface.training.checkpoints import (
    data_fingerprint,
    identity_differences,
    load_training_state,
    save_training_state,
)
from semiface.training.rng import capture_rng_state, restore_rng_state


def test_checkpoint_round_trip_and_refusals(tmp_path) -> None:
    identity = {"settings": {"lr": 0.1, "epochs": 3}, "feature_dim": 8, "data": data_fingerprint(np.arange(4))}
    path = save_training_state(tmp_path / "state.pt", "toy-v1", identity, {"epoch": 2, "weights": torch.ones(3)})
    state = load_training_state(path, "toy-v1", identity)
    assert state["epoch"] == 2 and torch.equal(state["weights"], torch.ones(3))
    other = {**identity, "settings": {"lr": 0.2, "epochs": 3}, "data": data_fingerprint(np.arange(5))}
    with pytest.raises(ConfigError, match=r"state.pt: .*another run \(data: other data; settings.lr: 0.1 there, 0.2 now\)"):
        load_training_state(path, "toy-v1", other)
    with pytest.raises(DataError, match="not a toy-v2 checkpoint"):
        load_training_state(path, "toy-v2", identity)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.pt: not a readable training checkpoint"):
        load_training_state(tmp_path / "junk.pt", "toy-v1", identity)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "state.pt"]  # no temp file left


def test_identity_differences_name_new_and_missing_keys() -> None:
    assert identity_differences({"a": 1}, {"a": 1}) == []
    assert identity_differences({"a": 1}, {"a": 1, "b": 2}) == ["b: None there, 2 now"]
    assert identity_differences({"s": {"x": 1}}, {"s": {"x": 1, "y": 0}}) == ["s.y: None there, 0 now"]


def test_rng_state_round_trip_replays_every_generator() -> None:
    state = capture_rng_state(torch.device("cpu"))
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state, torch.device("cpu"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_command_line_assignments_read_json_values() -> None:
    from semiface.cli import parse_assignment

    assert parse_assignment("epochs=20", "--set") == ("epochs", 20)
    assert parse_assignment("lr_milestones=[0.5, 0.8]", "--set") == ("lr_milestones", [0.5, 0.8])
    assert parse_assignment("trunk=resnet50", "--set") == ("trunk", "resnet50")
    assert parse_assignment("knn_uf.tau=0.6", "--param") == ("knn_uf.tau", 0.6)
    with pytest.raises(ConfigError, match="--set 'epochs': expected KEY=VALUE"):
        parse_assignment("epochs", "--set")


def test_each_trainer_marks_what_does_not_change_training() -> None:
    from backbone.train_config import RUNTIME_FIELDS, TrainConfig
    from clustering.clusformer.config import ClusformerConfig
    from clustering.facet.config import FaceTConfig
    from semiface.training.settings import runtime_field_names, training_settings

    assert RUNTIME_FIELDS == {"num_workers", "decode", "device", "verbose"}
    assert {"device", "tau", "partition", "tune_samples", "inference_batch"} <= runtime_field_names(FaceTConfig)
    assert {"device", "tau", "partition", "tune_samples", "infer_batch_size"} <= runtime_field_names(ClusformerConfig)
    for config in (FaceTConfig(), ClusformerConfig(), TrainConfig(trunk="test_resnet", image_size=32)):
        settings = training_settings(config)
        assert "device" not in settings and {"epochs", "seed"} <= set(settings)
    # what training reads stays in: the epoch choice's slice, the learning rate, the architecture
    assert {"epoch_val_samples", "lr", "hop1"} <= set(training_settings(FaceTConfig()))


def test_every_trainer_reports_each_epoch_in_one_format(caplog) -> None:
    import logging

    from clustering.base import make_method
    from semiface.training.history import epoch_line

    assert epoch_line("facet", {"epoch": 2, "epochs": 3, "loss": 0.123456, "note": "x"}) == \
        "facet epoch 2/3: loss=0.1235, note=x"
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 5)
    features = rng.normal(size=(12, 16))[labels] + 0.4 * rng.normal(size=(60, 16))
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    torch.set_num_threads(1)
    for name, params in (("facet", dict(preset="demo", hop1=6, hop2=3, heads=2, head_dim=8, ff_dim=16, epochs=2)),
                         ("clusformer", dict(k=6, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                             dim_feedforward=16, epochs=2))):
        records: list[dict] = []
        with caplog.at_level(logging.INFO):
            make_method(name, **params, device="cpu").fit(features, labels, on_epoch=records.append)
        assert [(r["epoch"], r["epochs"]) for r in records] == [(1, 2), (2, 2)] and "loss" in records[0]
        assert f"{name} epoch 2/2: loss=" in caplog.text
