"""Margin softmax heads for face recognition: ArcFace and CosFace, with optional Partial-FC sampling.

The classifier weight ``W`` [C, D] is the class-centre matrix. Logits are ``s * cos(theta_j)``
for the other classes and, for the true class y:

* ArcFace: ``s * cos(theta_y + m)`` (additive angular margin, default s=64, m=0.5);
* CosFace: ``s * (cos(theta_y) - m)`` (additive cosine margin, default s=64, m=0.35).

Numerical safety of ArcFace. ``cos(theta + m)`` is computed as ``cos*cos(m) - sin*sin(m)``
with ``sin = sqrt(max(1 - cos^2, 1e-12))``: the floor keeps the square root's derivative
finite at theta = 0 and theta = pi (where ``1 - cos^2`` is 0) without shifting any value
measurably. Past ``theta > pi - m`` the angle ``theta + m`` would wrap beyond pi and the logit
would *rise* again (the margin would reward a worse sample), so there the target logit
continues as ``cos(theta) - (1 - cos(m))``, a CosFace-style margin that meets ``cos(theta + m)
= -1`` at ``theta = pi - m`` and keeps decreasing. (The InsightFace reference uses
``cos(theta) - m*sin(m)`` there, which is also monotone but jumps by about 0.12 at the switch;
ours is continuous.) With ``easy_margin=True`` the margin is applied only where ``cos > 0``.

Partial FC (``sample_fraction < 1``): each step scores only the classes present in the batch
plus a random subset of the others, ``ceil(sample_fraction * C)`` centres in all, so the
softmax costs a fraction of the full one (An et al., "Partial FC", 2021). Here the centre
matrix itself is not sharded across processes.

Sub-centres (``sub_centres`` = K > 1, Deng et al., "Sub-center ArcFace", ECCV 2020): each class
has K centres and a row's cosine to the class is its largest cosine to them. A class that holds two
people (a pseudo-label cluster that merged them) can then keep one centre for each instead of
pulling both towards one point.

Multi-task retraining (:class:`TwoHeadMargin`): one head for the labelled classes and one for
the pseudo classes on a shared trunk, each row scored by its own set's head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from semiface.errors import ConfigError

MARGINS = ("arcface", "cosface")
DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35}
SIN_FLOOR = 1e-12  # floor of 1 - cos^2 under the square root


def arcface_target(cos: torch.Tensor, m: float, easy_margin: bool = False) -> torch.Tensor:
    """``cos(theta + m)`` for target cosines, safe at theta = 0 and pi (see the module docstring)."""
    cos = cos.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(SIN_FLOOR))
    shifted = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return torch.where(cos > 0, shifted, cos)
    threshold = math.cos(math.pi - m)
    return torch.where(cos > threshold, shifted, cos - (1.0 - math.cos(m)))


def margin_logits(
    cos: torch.Tensor, labels: torch.Tensor, kind: str, s: float, m: float, easy_margin: bool = False
) -> torch.Tensor:
    """Scaled logits: the margin applied at each row's label column of the cosine matrix."""
    target = cos.gather(1, labels[:, None]).squeeze(1)
    if kind == "arcface":
        target = arcface_target(target, m, easy_margin)
    elif kind == "cosface":
        target = target - m
    else:
        raise ConfigError(f"margin: {kind!r} is not one of {list(MARGINS)}")
    return s * cos.scatter(1, labels[:, None], target[:, None])


def sample_centres(
    labels: torch.Tensor, num_classes: int, fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial FC: the batch's classes plus random negatives, ``ceil(fraction*C)`` in all.

    Returns (sorted class ids to score [K], labels remapped to positions in that list).
    """
    positives = torch.unique(labels)
    wanted = max(math.ceil(fraction * num_classes), len(positives))
    is_negative = torch.ones(num_classes, dtype=torch.bool, device=labels.device)
    is_negative[positives] = False
    negatives = torch.nonzero(is_negative).squeeze(1)
    order = torch.randperm(len(negatives), generator=generator).to(labels.device)
    chosen = torch.cat([positives, negatives[order[: wanted - len(positives)]]]).sort().values
    return chosen, torch.searchsorted(chosen, labels)


class MarginHead(nn.Module):
    """Class-centre matrix + margin loss. ``forward`` returns the (weighted) mean cross-entropy."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        kind: str = "arcface",
        s: float = 64.0,
        m: float | None = None,
        easy_margin: bool = False,
        sample_fraction: float = 1.0,
        sub_centres: int = 1,
    ) -> None:
        super().__init__()
        if kind not in MARGINS:
            raise ConfigError(f"margin: {kind!r} is not one of {list(MARGINS)}")
        if not 0.0 < sample_fraction <= 1.0:
            raise ConfigError(f"sample_fraction: must be in (0, 1], got {sample_fraction}")
        if num_classes < 2:
            raise ConfigError(f"num_classes: a margin softmax needs at least 2 classes, got {num_classes}")
        if sub_centres < 1:
            raise ConfigError(f"sub_centres: at least 1 centre per class, got {sub_centres}")
        self.kind, self.s, self.easy_margin = kind, float(s), easy_margin
        self.m = DEFAULT_MARGIN[kind] if m is None else float(m)
        self.num_classes, self.sample_fraction, self.sub_centres = num_classes, sample_fraction, sub_centres
        # Rows c*K .. c*K + K-1 are class c's sub-centres.
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centres, embedding_dim).normal_(0.0, 0.01))

    def cosines(self, embeddings: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine of each embedding to each (selected) class, the largest over its sub-centres, in
        float32 even under autocast."""
        k = self.sub_centres
        if class_ids is None:
            centres = self.weight
        else:
            centres = self.weight[(class_ids[:, None] * k + torch.arange(k, device=class_ids.device)).reshape(-1)]
        with torch.autocast(embeddings.device.type, enabled=False):
            cos = F.linear(F.normalize(embeddings.float()), F.normalize(centres.float()))
        return cos if k == 1 else cos.view(len(cos), -1, k).amax(dim=2)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-applied scaled logits over all classes (no sampling)."""
        return margin_logits(self.cosines(embeddings), labels, self.kind, self.s, self.m, self.easy_margin)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean over the batch of ``weight_i * CE_i`` (a weight of 1 everywhere is the plain mean).

        Normalising by the batch size, not by the sum of weights, keeps the loss of a shard
        comparable across processes (DDP averages gradients over equal-sized shards).
        """
        return self.row_losses(embeddings, labels, weights, generator).mean()

    def row_losses(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``weight_i * CE_i`` of each row [n] (Partial-FC sampled while training); zero rows give an empty tensor."""
        if self.sample_fraction < 1.0 and self.training:
            class_ids, targets = sample_centres(labels, self.num_classes, self.sample_fraction, generator)
            cos = self.cosines(embeddings, class_ids)
        else:
            cos, targets = self.cosines(embeddings), labels
        logits = margin_logits(cos, targets, self.kind, self.s, self.m, self.easy_margin)
        losses = F.cross_entropy(logits, targets, reduction="none")
        if weights is not None:
            losses = losses * weights.to(losses.dtype)
        return losses


class TwoHeadMargin(nn.Module):
    """Multi-task margin loss: head ``labelled`` over classes 0..L-1, head ``pseudo`` over L..L+P-1.

    Each row is scored by the head its label falls in (pseudo labels re-based to 0..P-1), so a
    pseudo class never competes with a labelled class in one softmax: a person present in both
    sets is not pushed away from himself. The loss is the sum of both heads' weighted CE over
    their rows divided by the batch size, on the scale of a single :class:`MarginHead`.

    A batch without rows of one head still runs that head, on zero rows: its part of the loss is
    an empty sum (0) and its centres get a zero gradient, so every parameter takes part in every
    step (DDP needs no ``find_unused_parameters``). Partial FC samples within each head.
    """

    def __init__(
        self,
        embedding_dim: int,
        labelled_classes: int,
        pseudo_classes: int,
        kind: str = "arcface",
        s: float = 64.0,
        m: float | None = None,
        easy_margin: bool = False,
        sample_fraction: float = 1.0,
        sub_centres: int = 1,
    ) -> None:
        super().__init__()
        self.labelled = MarginHead(embedding_dim, labelled_classes, kind, s, m, easy_margin, sample_fraction,
                                   sub_centres)
        self.pseudo = MarginHead(embedding_dim, pseudo_classes, kind, s, m, easy_margin, sample_fraction, sub_centres)
        self.num_labelled = labelled_classes
        self.num_classes = labelled_classes + pseudo_classes

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(sum of the labelled head's row losses + sum of the pseudo head's) / batch size."""
        if weights is None:
            weights = torch.ones(len(labels), device=labels.device)
        is_labelled = labels < self.num_labelled
        is_pseudo = ~is_labelled
        labelled = self.labelled.row_losses(embeddings[is_labelled], labels[is_labelled], weights[is_labelled],
                                            generator)
        pseudo = self.pseudo.row_losses(embeddings[is_pseudo], labels[is_pseudo] - self.num_labelled,
                                        weights[is_pseudo], generator)
        return (labelled.sum() + pseudo.sum()) / len(labels)
