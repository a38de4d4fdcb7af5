"""Neighbourhood statistics of (centre, neighbour) pairs: the side input of every learned link model.

A threshold on cosine similarity is a strong baseline; a link model that sees only transformed
features must first re-learn that cosine from little labelled data, and on real faces it falls
below the threshold. Given these statistics as inputs, the link classifier starts from what the
baselines use (the cosine itself) and adds what a threshold cannot: where the pair sits in each
other's neighbour lists and how dense each end's neighbourhood is (a cosine of 0.9 means "same
person" in a sparse region and little in a dense one).

Per pair (c, j), with N(x) the ``k`` nearest neighbours of x (itself excluded) and
density(x) the mean cosine of x to its first ``density_k`` neighbours:

- ``cosine``: cos(c, j);
- ``rank`` / ``reverse_rank``: position of j in N(c) / of c in N(j), divided by k (1 + 1/k when absent);
- ``shared``: |N(c) & N(j)| / k;
- ``density_centre`` / ``density_other``: density(c) / density(j);
- ``over_centre`` / ``over_other``: cos(c, j) - density(c) / - density(j).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from clustering.knn import KnnGraph, self_first_view

STAT_NAMES = ("cosine", "rank", "reverse_rank", "shared", "density_centre", "density_other", "over_centre", "over_other")
N_STATS = len(STAT_NAMES)
STAT_NEIGHBOURS = 30
DENSITY_NEIGHBOURS = 10


@dataclass(frozen=True)
class NeighbourhoodIndex:
    """Each node's first ``k`` neighbours (self excluded, -1 = none) and its density, on one device."""

    nbrs: Tensor
    density: Tensor

    @classmethod
    def from_graph(
        cls, knn: KnnGraph, device: torch.device | str = "cpu", k: int = STAT_NEIGHBOURS, density_k: int = DENSITY_NEIGHBOURS
    ) -> NeighbourhoodIndex:
        """From a kNN graph whose rows start with the node itself (``build_knn``'s layout: then the
        neighbours are a view of the graph's ids, no copy); ids keep the graph's dtype."""
        view = self_first_view(knn.nbrs, k + 1)
        if view is not None:
            nbrs, sims = view[:, 1:], knn.sims[:, 1 : k + 1]
            valid = nbrs >= 0
        else:
            own = np.arange(knn.n)[:, None]
            others = knn.nbrs != own
            order = np.argsort(~others, axis=1, kind="stable")  # other nodes first, in kNN order
            nbrs = np.take_along_axis(knn.nbrs, order, axis=1)[:, :k].copy()
            sims = np.take_along_axis(knn.sims, order, axis=1)[:, :k]
            valid = np.take_along_axis(others, order, axis=1)[:, :k] & (nbrs >= 0)
            nbrs[~valid] = -1
        first = valid[:, :density_k]
        density = np.where(first, sims[:, :density_k], 0.0).sum(1) / np.maximum(first.sum(1), 1)
        return cls(torch.from_numpy(nbrs).to(device), torch.from_numpy(density.astype(np.float32)).to(device))

    @property
    def k(self) -> int:
        return self.nbrs.shape[1]

    def stats(self, centres: Tensor, ids: Tensor, cosine: Tensor) -> Tensor:
        """Statistics float32 [B, L, N_STATS] of the pairs (``centres`` [B], ``ids`` [B, L]) with
        cosines ``cosine`` [B, L]; padding (id -1) gets zeros."""
        pad = ids < 0
        safe = ids.clamp(min=0)
        centre_nbrs = self.nbrs[centres]  # [B, k]
        other_nbrs = self.nbrs[safe]  # [B, L, k]
        k = self.k
        positions = torch.arange(1, k + 1, device=ids.device, dtype=torch.float32) / k
        missing = (k + 1) / k

        def position_of(lists: Tensor, targets: Tensor) -> Tensor:
            hit = lists == targets
            first = torch.where(hit, positions, torch.full_like(positions, missing)).amin(-1)
            return first

        # each centre's list sorted once: an element's rank in it and the shared entries are then
        # looked up (searchsorted) instead of compared against all k entries
        ordered, slot = centre_nbrs.sort(dim=1, stable=True)
        found = torch.searchsorted(ordered, safe.to(ordered.dtype)).clamp_(max=k - 1)
        rank = torch.where(ordered.gather(1, found) == safe, positions[slot.gather(1, found)], missing)
        reverse = position_of(other_nbrs, centres[:, None, None])
        shared = _shared_count(ordered, other_nbrs).float() / k
        d_centre = self.density[centres][:, None].expand_as(cosine)
        d_other = self.density[safe]
        cosine = cosine.float()
        out = torch.stack([cosine, rank, reverse, shared, d_centre, d_other, cosine - d_centre, cosine - d_other], -1)
        return out.masked_fill(pad[..., None], 0.0)


def _shared_count(ordered: Tensor, other_nbrs: Tensor) -> Tensor:
    """|N(c) & N(j)| [B, L] of the centres' lists sorted ascending [B, k] and the elements' lists
    [B, L, k] (-1 = none): each element's entries are looked up in its centre's sorted list
    (``searchsorted``), about 3x faster than comparing all k x k entry pairs and without their
    [B, L, k, k] temporary."""
    batch, length, k = other_nbrs.shape
    flat = other_nbrs.reshape(batch, length * k).to(ordered.dtype)
    position = torch.searchsorted(ordered, flat).clamp_(max=k - 1)
    hit = (ordered.gather(1, position) == flat) & (flat >= 0)
    return hit.view(batch, length, k).sum(-1)


class PairStatNorm(nn.Module):
    """Standardises the statistics with the mean and spread of the training pairs (buffers, saved
    with the model), so the classifier sees every statistic on one scale whatever the features."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_STATS))
        self.register_buffer("std", torch.ones(N_STATS))

    @torch.no_grad()
    def calibrate(self, stats: Tensor) -> None:
        """Set mean and std from ``stats`` [M, N_STATS] (real pairs only)."""
        stats = stats.reshape(-1, N_STATS).float()
        self.mean.copy_(stats.mean(0))
        self.std.copy_(stats.std(0).clamp(min=1e-4))

    def forward(self, stats: Tensor) -> Tensor:
        return (stats.float() - self.mean) / self.std
