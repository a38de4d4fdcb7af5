"""Neighbour tables and the gathering of one batch of FaceT inputs from them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clustering.facet.model import FaceTModel
from clustering.facet.row_store import RowStore
from clustering.knn import self_first_view
from clustering.pair_stats import NeighbourhoodIndex

_EPS = 1e-12  # F.normalize's floor on a norm


def neighbour_table(nbrs: np.ndarray, count: int) -> np.ndarray:
    """Rows ``[self, first `count` other neighbours]`` [N, count + 1], -1 where a row runs out; ids
    in the dtype of ``nbrs`` (int32 below 2^31 rows).

    A graph in ``build_knn``'s layout (self first, nowhere else, no -1 in those columns) gives a view
    of its first ``count + 1`` columns: the ids are held once, by the graph. Otherwise the table is
    compacted here, robust to kNN rows where the node is not first (duplicate features) or is
    missing, and to -1 entries (faiss pads rows it could not fill).
    """
    view = self_first_view(nbrs, count + 1)
    if view is not None:
        return view
    nbrs = np.asarray(nbrs)
    n = nbrs.shape[0]
    own = np.arange(n, dtype=nbrs.dtype)[:, None]
    keep = (nbrs >= 0) & (nbrs != own)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in kNN order
    others = np.take_along_axis(nbrs, order, axis=1)
    others[~np.take_along_axis(keep, order, axis=1)] = -1
    if others.shape[1] < count:
        others = np.pad(others, ((0, 0), (0, count - others.shape[1])), constant_values=-1)
    return np.concatenate([own, others[:, :count]], axis=1)


def enhance_nodes(model: FaceTModel, features: Tensor | RowStore, table: Tensor, nodes: Tensor, hop2: int) -> Tensor:
    """Enhanced features g [M, d] of ``nodes`` [M] from their raw features and hop2 context.

    ``features`` is anything indexable by an id tensor (a tensor or an ``infer.RowStore``); rows
    are L2-normalised here, so inputs need not be.
    """
    own = F.normalize(features[nodes], dim=-1)
    if not model.uses_context:
        return model.enhance(own)
    context_ids = table[nodes, : hop2 + 1]
    pad = context_ids < 0
    return model.enhance(own, F.normalize(features[context_ids.clamp(min=0)], dim=-1), pad)


def gather_sequences(
    pivots: Tensor, table: Tensor, hop1: int, enhanced: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """The LP inputs of ``pivots`` [B]: (ids [B, L], enhanced sequence [B, L, d], pad mask [B, L]).

    Position 0 is the pivot itself; ``enhanced(unique_ids)`` returns g for sorted unique node ids,
    so each node is enhanced once per batch however many sequences it appears in.
    """
    ids = table[pivots, : hop1 + 1]
    pad = ids < 0
    nodes, inverse = torch.unique(ids[~pad], return_inverse=True)
    g_nodes = enhanced(nodes)
    sequence = g_nodes.new_zeros((*ids.shape, g_nodes.shape[-1]))
    sequence[~pad] = g_nodes[inverse]
    return ids, sequence, pad


def sequence_stats(
    index: NeighbourhoodIndex, features: Tensor | RowStore, pivots: Tensor, ids: Tensor, inverse_norms: Tensor | None = None
) -> Tensor:
    """Neighbourhood statistics [B, L, N_STATS] of each pivot with the ids of its sequence [B, L]
    (cosines from the raw ``features``, a tensor or a ``RowStore``: dot products over the norms,
    without writing normalised copies of the [B, L, D] rows gathered; ``inverse_norms`` [N], when
    given, spares computing the norms of the gathered rows)."""
    safe = ids.clamp(min=0)
    own = features[pivots].float()
    others = features[safe].float()
    dots = torch.bmm(others, own.unsqueeze(-1)).squeeze(-1)
    if inverse_norms is not None:
        return index.stats(pivots, ids, dots * inverse_norms[pivots].unsqueeze(-1) * inverse_norms[safe])
    norms = own.norm(dim=-1, keepdim=True).clamp(min=_EPS) * others.norm(dim=-1).clamp(min=_EPS)
    return index.stats(pivots, ids, dots / norms)
