"""ArcFace / CosFace logits against direct formulas, numerical safety, Partial-FC sampling, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backbone.margin import MarginHead, arcface_target, sample_centres
from semiface.errors import ConfigError


def _head_and_batch(kind: str, seed: int = 0, classes: int = 7, dim: int = 16, batch: int = 12):
    torch.manual_seed(seed)
    head = MarginHead(dim, classes, kind=kind)
    embeddings = torch.randn(batch, dim)
    labels = torch.randint(0, classes, (batch,))
    return head, embeddings, labels


def _direct_cosines(head: MarginHead, embeddings: torch.Tensor) -> np.ndarray:
    e = embeddings.double().numpy()
    w = head.weight.detach().double().numpy()
    return (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


def test_arcface_logits_match_direct_formula():
    head, embeddings, labels = _head_and_batch("arcface")
    cos = _direct_cosines(head, embeddings)
    expected = 64.0 * cos
    rows = np.arange(len(labels))
    theta = np.arccos(cos[rows, labels.numpy()])
    assert (theta + 0.5 < math.pi).all()  # random vectors in 16-d: no fallback branch here
    expected[rows, labels.numpy()] = 64.0 * np.cos(theta + 0.5)
    got = head.logits(embeddings, labels).detach().double().numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_cosface_logits_match_direct_formula():
    head, embeddings, labels = _head_and_batch("cosface")
    cos = _direct_cosines(head, embeddings)
    expected = 64.0 * cos
    rows = np.arange(len(labels))
    expected[rows, labels.numpy()] = 64.0 * (cos[rows, labels.numpy()] - 0.35)
    got = head.logits(embeddings, labels).detach().double().numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_arcface_is_finite_and_correct_at_theta_zero_and_pi():
    torch.manual_seed(1)
    head = MarginHead(8, 3)
    centre = head.weight.detach()[1]
    # embedding == its own centre (theta = 0) and == minus its centre (theta = pi)
    embeddings = torch.stack([centre * 3.0, -centre * 2.0]).requires_grad_(True)
    labels = torch.tensor([1, 1])
    logits = head.logits(embeddings, labels)
    assert logits[0, 1].item() == pytest.approx(64.0 * math.cos(0.5), abs=1e-3)
    # past theta = pi - m the documented continuation cos(theta) - (1 - cos(m)) applies
    assert logits[1, 1].item() == pytest.approx(64.0 * (-1.0 - (1.0 - math.cos(0.5))), abs=1e-3)
    head(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()


def test_arcface_target_decreases_monotonically_over_all_angles():
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    target = arcface_target(torch.cos(theta), m=0.5)
    assert (target[1:] < target[:-1]).all()
    # continuous where the branch switches (theta = pi - m)
    switch = int(torch.searchsorted(theta, torch.tensor(math.pi - 0.5, dtype=torch.float64)))
    assert abs(target[switch] - target[switch - 1]) < 2e-3


def test_loss_is_weighted_mean_of_cross_entropies():
    head, embeddings, labels = _head_and_batch("arcface")
    weights = torch.linspace(0.0, 2.0, len(labels))
    per_sample = F.cross_entropy(head.logits(embeddings, labels), labels, reduction="none")
    assert head(embeddings, labels, weights).item() == pytest.approx((per_sample * weights).mean().item(), rel=1e-5)
    assert head(embeddings, labels).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    zero_first = weights.clone()
    zero_first[0] = 0.0
    grads = torch.autograd.grad(head(embeddings.requires_grad_(True), labels, zero_first), embeddings)[0]
    assert grads[0].abs().max().item() == 0.0 and grads[1].abs().max().item() > 0.0


def test_partial_fc_keeps_positives_and_remaps_labels():
    labels = torch.tensor([3, 3, 17, 42])
    generator = torch.Generator().manual_seed(0)
    chosen, targets = sample_centres(labels, num_classes=100, fraction=0.1, generator=generator)
    assert len(chosen) == 10 and len(torch.unique(chosen)) == 10
    assert torch.equal(chosen[targets], labels)


def test_partial_fc_loss_equals_full_softmax_over_sampled_classes():
    torch.manual_seed(0)
    head = MarginHead(16, 50, sample_fraction=0.2)
    embeddings, labels = torch.randn(6, 16), torch.randint(0, 50, (6,))
    sampled = head(embeddings, labels, generator=torch.Generator().manual_seed(5))
    chosen, targets = sample_centres(labels, 50, 0.2, torch.Generator().manual_seed(5))
    logits = head.logits(embeddings, labels)[:, chosen]
    assert sampled.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    head.eval()  # evaluation scores every class
    assert head(embeddings, labels).item() == pytest.approx(
        F.cross_entropy(head.logits(embeddings, labels), labels).item(), rel=1e-5
    )


def test_a_class_cosine_is_the_largest_over_its_sub_centres_and_sampling_takes_all_of_them():
    torch.manual_seed(0)
    head = MarginHead(16, 30, sub_centres=3, sample_fraction=0.3)
    embeddings, labels = torch.randn(5, 16), torch.randint(0, 30, (5,))
    direct = _direct_cosines(head, embeddings).reshape(5, 30, 3).max(axis=2)
    np.testing.assert_allclose(head.cosines(embeddings).detach().numpy(), direct, rtol=1e-5, atol=1e-6)
    chosen, targets = sample_centres(labels, 30, 0.3, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(head.cosines(embeddings, chosen).detach().numpy(), direct[:, chosen.numpy()],
                               rtol=1e-5, atol=1e-6)
    sampled = head(embeddings, labels, generator=torch.Generator().manual_seed(1))
    full = head.logits(embeddings, labels)[:, chosen]
    assert sampled.item() == pytest.approx(F.cross_entropy(full, targets).item(), rel=1e-5)


def test_sub_centres_keep_one_centre_for_each_of_two_people_under_one_label():
    """A class that holds two people (a merged cluster): one centre settles for a compromise, two
    centres each take one person, so both people's rows end up closer to their class."""
    torch.manual_seed(0)
    people = F.normalize(torch.randn(4, 16), dim=1)  # class 0 = people 0 and 1; classes 1, 2 = people 2, 3
    rows = F.normalize(people.repeat_interleave(20, 0) + 0.05 * torch.randn(80, 16), dim=1)
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 20)

    def trained_cosines(sub_centres: int) -> torch.Tensor:
        torch.manual_seed(1)
        head = MarginHead(16, 3, s=16.0, m=0.2, sub_centres=sub_centres)
        optimiser = torch.optim.SGD(head.parameters(), lr=0.5)
        for _ in range(300):
            optimiser.zero_grad()
            head(rows, labels).backward()
            optimiser.step()
        return head.cosines(rows).detach()[:40, 0]

    one, two = trained_cosines(1), trained_cosines(2)
    for person in (slice(0, 20), slice(20, 40)):
        assert two[person].mean() > one[person].mean() + 0.2


@pytest.mark.parametrize(
    "kwargs", [{"kind": "sphereface"}, {"sample_fraction": 0.0}, {"sample_fraction": 1.5}, {"num_classes": 1},
               {"sub_centres": 0}]
)
def test_bad_head_parameters_are_refused(kwargs):
    params = {"embedding_dim": 8, "num_classes": 4, **kwargs}
    with pytest.raises(ConfigError):
        MarginHead(**params)
