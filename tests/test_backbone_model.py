"""Embedding model: shapes, heads, config round trip, checkpoint architecture checks."""

from __future__ import annotations

import pytest
import torch

from backbone.checkpoint import load_checkpoint, load_embedder, save_checkpoint
from backbone.model import FaceEmbedder, ModelConfig
from semiface.errors import ConfigError, DataError

TINY = ModelConfig(trunk="test_resnet", image_size=32, embedding_dim=16)


@pytest.mark.parametrize("pooling", ["flatten", "avg"])
def test_embedder_maps_images_to_embedding_dim(pooling):
    model = FaceEmbedder(ModelConfig(trunk="test_resnet", image_size=48, embedding_dim=24, pooling=pooling))
    out = model(torch.randn(3, 3, 48, 48))
    assert out.shape == (3, 24) and torch.isfinite(out).all()


def test_probe_does_not_touch_batchnorm_statistics():
    model = FaceEmbedder(TINY)
    bn = next(m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 0 and model.training


def test_model_config_round_trip_and_unknown_keys():
    config = ModelConfig(trunk="resnet18", image_size=64, trunk_kwargs={"drop_rate": 0.1})
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="colour"):
        ModelConfig.from_dict({**config.to_dict(), "colour": 1})


@pytest.mark.parametrize(
    "kwargs, field",
    [({"trunk": "no_such_net"}, "trunk"), ({"pooling": "max"}, "pooling"), ({"image_size": 8}, "image_size"),
     ({"trunk": "test_vit", "pooling": "flatten"}, "pooling")],
)
def test_bad_model_config_is_refused(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        FaceEmbedder(ModelConfig(**{"trunk": "test_resnet", "image_size": 32, **kwargs}))


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = FaceEmbedder(TINY).eval()
    path = save_checkpoint(tmp_path / "m.pt", {"model_config": TINY.to_dict(), "model": model.state_dict()})
    restored = load_embedder(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(restored(x), model(x))
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    other = ModelConfig(trunk="test_resnet", image_size=32, embedding_dim=8)
    bad = save_checkpoint(tmp_path / "bad.pt", {"model_config": other.to_dict(), "model": model.state_dict()})
    with pytest.raises(ConfigError, match="bad.pt"):
        load_embedder(bad)
