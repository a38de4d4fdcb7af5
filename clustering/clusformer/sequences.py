"""Visual grammar (paper section 4.3.1, Algorithm 1) and Cosine Distance Encoding (section 4.3.4).

For a batch of centres, the candidates are the first k columns of the kNN graph (the centre and its
k - 1 nearest neighbours: the graph is sorted by similarity, so a deeper graph, such as the
deployment's k = 160, adds nothing to a sequence of k but gathers), and the sequence is the centre
followed by those neighbours in decreasing cosine similarity to the centre (recomputed from the
features, so the order does not depend on how the graph was searched). With ``radius_step`` the sequence
grows by bands of cosine distance [r, r + step) from the centre and stops at the first empty band, as
in Algorithm 1. Sequences are built per batch and never for all N at once. Short sequences (a cut, a
graph with fewer than k neighbours, -1 ids from an approximate search) are padded and masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clustering.knn import KnnGraph
from clustering.pair_stats import NeighbourhoodIndex
from clustering.placement import device_budget, fit_on_device


@dataclass(frozen=True)
class SequenceBatch:
    """One batch of visual sequences.

    ``ids`` [B, k] sample ids (the graph's id dtype, -1 = padding), ``feats`` [B, k, d] unit-norm features (zero at padding),
    ``sims`` [B, k, k] cosine similarities between the elements (zero rows/columns at padding),
    ``pad`` [B, k] True at padding, ``stats`` [B, k, N_STATS] the (centre, element) neighbourhood
    statistics when asked for. Position 0 is always the centre.
    """

    ids: np.ndarray
    feats: torch.Tensor
    sims: torch.Tensor
    pad: torch.Tensor
    stats: torch.Tensor | None = None

    def cde_input(self) -> torch.Tensor:
        """Cosine Distance Encoding: each element's feature concatenated with its similarity row, [B, k, d + k]."""
        return torch.cat([self.feats, self.sims], dim=-1)


def build_sequences(
    features: np.ndarray | torch.Tensor,
    knn: KnnGraph,
    centres: np.ndarray,
    k: int,
    *,
    radius_step: float | None = None,
    device: torch.device | str = "cpu",
    index: NeighbourhoodIndex | None = None,
) -> SequenceBatch:
    """Visual sequences of length ``k`` for ``centres`` (rows of ``features`` and ``knn``), with the
    pairs' statistics from ``index`` (a ``NeighbourhoodIndex`` of ``knn`` on ``device``) when given.
    ``features``: a host array (rows gathered per batch) or a tensor already on ``device``
    (``device_features``)."""
    centres = np.asarray(centres, dtype=np.int64)
    candidates = _candidates(knn.nbrs[centres, :k], centres)
    feats = _gather_unit_rows(features, candidates, device)
    valid = torch.from_numpy(candidates >= 0).to(device)

    to_centre = torch.einsum("bkd,bd->bk", feats, feats[:, 0]).clamp_(-1.0, 1.0)
    key = to_centre.masked_fill(~valid, float("-inf"))
    key[:, 0] = float("inf")  # the centre leads whatever its duplicates score
    order = torch.argsort(key, dim=1, descending=True, stable=True)[:, :k]
    keep = torch.gather(valid, 1, order)
    if radius_step is not None:
        keep &= _radius_bands_kept(torch.gather(to_centre, 1, order), radius_step)

    ids = np.take_along_axis(candidates, order.cpu().numpy(), axis=1)
    feats = torch.gather(feats, 1, order.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
    pad = ~keep
    ids[pad.cpu().numpy()] = -1
    feats = feats.masked_fill(pad.unsqueeze(-1), 0.0)
    if feats.shape[1] < k:  # fewer candidates than k: pad at the end
        missing = k - feats.shape[1]
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
        feats = torch.nn.functional.pad(feats, (0, 0, 0, missing))
        pad = torch.nn.functional.pad(pad, (0, missing), value=True)
    sims = torch.bmm(feats, feats.transpose(1, 2)).clamp_(-1.0, 1.0)
    stats = None
    if index is not None:
        stats = index.stats(torch.from_numpy(centres).to(device), torch.from_numpy(ids).to(device), sims[:, 0])
    return SequenceBatch(ids=ids, feats=feats, sims=sims, pad=pad, stats=stats)


def device_features(features: np.ndarray, device: torch.device | str) -> np.ndarray | torch.Tensor:
    """``features`` as a float32 tensor on a GPU ``device`` when they fit in its free memory
    (``clustering.placement``): sequences are then gathered there. On the CPU, or when they do not
    fit, the host array itself: rows are gathered per batch."""
    device = torch.device(device)
    if device.type == "cpu":
        return features
    (fits,) = fit_on_device([features.shape[0] * features.shape[1] * 4], device_budget(device))
    return torch.as_tensor(np.asarray(features, dtype=np.float32)).to(device) if fits else features


def _candidates(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Centre first, then the graph's neighbours with the centre's own entries removed (-1); ids keep the graph's dtype."""
    rows = np.where(rows == centres[:, None], -1, rows)
    return np.concatenate([centres[:, None].astype(rows.dtype), rows], axis=1)


def _gather_unit_rows(features: np.ndarray | torch.Tensor, ids: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """Rows ``features[ids]`` (ids -1 give zero rows) L2-normalised, as a float32 tensor [B, K, d].

    From a tensor the rows are gathered where it lies; from an array only the rows needed are read,
    so ``features`` may be a memory map.
    """
    flat = ids.reshape(-1)
    valid = flat >= 0
    if isinstance(features, torch.Tensor):
        index = torch.from_numpy(np.where(valid, flat, 0)).to(features.device)
        rows = features[index].float().masked_fill_(~torch.from_numpy(valid).to(features.device)[:, None], 0.0)
        return torch.nn.functional.normalize(rows.view(*ids.shape, features.shape[1]), dim=-1).to(device)
    out = np.take(features, np.where(valid, flat, 0), axis=0).astype(np.float32, copy=False)
    out[~valid] = 0.0
    tensor = torch.from_numpy(out).to(device).view(*ids.shape, features.shape[1])
    return torch.nn.functional.normalize(tensor, dim=-1)


def _radius_bands_kept(sims_sorted: torch.Tensor, step: float) -> torch.Tensor:
    """Algorithm 1: keep the bands of cosine distance [0, s), [s, 2s), ... up to the first empty one.

    ``sims_sorted`` [B, k] is in decreasing order, so the band index never decreases along a row;
    an element is kept when no band before its own was skipped.
    """
    band = torch.floor((1.0 - sims_sorted).clamp_(min=0.0) / step)
    jump = torch.diff(band, dim=1, prepend=torch.zeros_like(band[:, :1])) > 1
    return torch.cumsum(jump.int(), dim=1) == 0
