"""The shared learning-rate schedules give exactly the rates each trainer had before they shared them."""

from __future__ import annotations

import math

import pytest

from backbone.steps import learning_rate
from backbone.train_config import TrainConfig
from semiface.training.schedules import learning_rate_at, lr_factor


@pytest.mark.parametrize("schedule", ["poly", "step"])
def test_backbone_rates(schedule: str) -> None:
    config = TrainConfig(trunk="test_resnet", image_size=32, epochs=5, lr=0.1, schedule=schedule, warmup_epochs=1.0)
    steps_per_epoch, total = 7, 35
    for step in range(total):
        if step < 7:
            expected = 0.1 * (step + 1) / 7
        elif schedule == "step":
            expected = 0.1 * 0.1 ** sum(step >= x * total for x in (0.4, 0.7, 0.9))
        else:
            expected = 0.1 * (1.0 - (step - 7) / (total - 7)) ** 2.0
        assert learning_rate(config, step, steps_per_epoch) == expected  # bit for bit


def test_facet_warmup_cosine_and_clusformer_linear_factors() -> None:
    cosine, linear = lr_factor(100, warmup=10, decay="cosine"), lr_factor(100, decay="linear")
    for step in range(120):
        warm = (step + 1) / 10 if step < 10 else 0.5 * (1.0 + math.cos(math.pi * min((step - 10) / 90, 1.0)))
        assert cosine(step) == warm
        assert linear(step) == max(0.0, 1.0 - step / 100)


def test_every_decay_starts_at_base_after_warmup_and_ends_low() -> None:
    for decay in ("step", "poly", "cosine", "linear"):
        rates = [learning_rate_at(s, 50, base=2.0, warmup=5, decay=decay, milestones=(0.5,)) for s in range(50)]
        assert rates[0] == pytest.approx(0.4) and rates[5] == pytest.approx(2.0)
        assert rates[-1] < rates[5] and all(r >= 0 for r in rates)
    with pytest.raises(ValueError, match="decay"):
        learning_rate_at(0, 10, decay="exponential")
