"""FaceT network: Relation Encoder (node enhancement) and Linkage Predictor (edge classification).

Built from ``torch.nn.TransformerEncoderLayer`` (post-norm: residual, dropout, LayerNorm,
feed-forward, as the paper's eq. 4 and 7) and ``torch.nn.MultiheadAttention``.
Padded sequence positions (a node with fewer neighbours) are masked out of every attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clustering.facet.config import FaceTConfig
from clustering.pair_stats import N_STATS, PairStatNorm


def _self_attention_stack(cfg: FaceTConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=cfg.model_dim, nhead=cfg.heads, dim_feedforward=cfg.ff_dim, dropout=cfg.dropout,
        batch_first=True,
    )
    return nn.TransformerEncoder(layer, num_layers=cfg.depth, enable_nested_tensor=False)


class RelationEncoder(nn.Module):
    """Section 3.3: d_e self-attention layers over the hop2 context, then attention from the node.

    g_q = LayerNorm(f_q + dropout(Attention(f_q, context, context))).
    """

    def __init__(self, cfg: FaceTConfig) -> None:
        super().__init__()
        self.context_layers = _self_attention_stack(cfg)
        self.attend = nn.MultiheadAttention(cfg.model_dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.model_dim)

    def forward(self, node: Tensor, context: Tensor, context_pad: Tensor) -> Tensor:
        """node [M, d], context [M, C, d], context_pad bool [M, C] (True = padding) -> g [M, d]."""
        context = self.context_layers(context, src_key_padding_mask=context_pad)
        attended, _ = self.attend(node[:, None], context, context, key_padding_mask=context_pad, need_weights=False)
        return self.norm(node + self.dropout(attended[:, 0]))


class LinkagePredictor(nn.Module):
    """Section 3.4: d_e self-attention layers over the node's neighbour sequence, then a PReLU MLP
    on e_qk = cat(g_q, g_qk) (+ g_q * g_qk with ``edge_embedding="concat_product"``, + the pair's
    standardised neighbourhood statistics with ``pair_stats``) giving two logits (different, same
    identity)."""

    def __init__(self, cfg: FaceTConfig) -> None:
        super().__init__()
        self.sequence_layers = _self_attention_stack(cfg)
        d = cfg.model_dim
        self.with_product = cfg.edge_embedding == "concat_product"
        width = (3 if self.with_product else 2) * d + (N_STATS if cfg.pair_stats else 0)
        self.classifier = nn.Sequential(nn.Linear(width, d), nn.PReLU(), nn.Linear(d, 2))

    def forward(self, pivot: Tensor, sequence: Tensor, sequence_pad: Tensor, stats: Tensor | None = None) -> Tensor:
        """pivot [B, d], sequence [B, L, d], sequence_pad bool [B, L] (+ standardised pair
        statistics [B, L, N_STATS]) -> logits [B, L, 2]."""
        sequence = self.sequence_layers(sequence, src_key_padding_mask=sequence_pad)
        first, activation, last = self.classifier
        return last(activation(self._first_layer(first, pivot, sequence, stats)))

    def _first_layer(self, first: nn.Linear, pivot: Tensor, sequence: Tensor, stats: Tensor | None) -> Tensor:
        """``first(cat(pivot, sequence, pivot * sequence, stats))`` [B, L, d] without the [B, L, width]
        concatenation: the weight's column blocks applied to each part, the pivot's once per row and
        the product folded into one per-pivot matrix, W_s + diag(pivot) W_p (same values, about a
        third of the work of the link classifier at inference)."""
        d = sequence.shape[-1]
        weight = first.weight.to(sequence.dtype)
        bias = first.bias.to(sequence.dtype)
        w_pivot, w_sequence = weight[:, :d], weight[:, d : 2 * d]
        per_pivot = w_sequence.t().expand(len(pivot), d, -1)
        if self.with_product:
            per_pivot = per_pivot + pivot[:, :, None] * weight[:, 2 * d : 3 * d].t()
        out = torch.baddbmm((pivot @ w_pivot.t() + bias)[:, None], sequence, per_pivot)
        if stats is not None:
            out = out + stats.to(sequence.dtype) @ weight[:, -N_STATS:].t()
        return out


class FaceTModel(nn.Module):
    """The whole network for one variant: ``full``, ``only_re`` or ``only_lp``.

    Features of dimension ``feature_dim`` are linearly projected to heads x head_dim when the two
    differ (identity otherwise, as in the paper where both are 256).
    """

    def __init__(self, feature_dim: int, cfg: FaceTConfig) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        d = cfg.model_dim
        self.project = nn.Identity() if feature_dim == d else nn.Linear(feature_dim, d)
        self.encoder = None if cfg.variant == "only_lp" else RelationEncoder(cfg)
        # Unit-norm features have per-dimension scale 1/sqrt(D), the attention outputs (after
        # LayerNorm) scale 1: inputs are scaled by sqrt(D) so that f_q is not drowned in the
        # residual g_q = LN(f~_q + f_q) nor the pivot in e_qk.
        self.input_scale = math.sqrt(feature_dim)
        self.predictor = None if cfg.variant == "only_re" else LinkagePredictor(cfg)
        self.pair_norm = PairStatNorm() if cfg.pair_stats and self.predictor is not None else None
        self.model_dim = d

    @property
    def uses_context(self) -> bool:
        """Whether ``enhance`` reads the hop2 context (False for only_lp)."""
        return self.encoder is not None

    def enhance(self, node: Tensor, context: Tensor | None = None, context_pad: Tensor | None = None) -> Tensor:
        """Raw features node [M, D] (+ context [M, C, D]) -> enhanced g [M, d]."""
        projected = self.project(node * self.input_scale)
        if self.encoder is None:
            return projected
        if context is None or context_pad is None:
            raise ValueError("the Relation Encoder needs the hop2 context of every node")
        return self.encoder(projected, self.project(context * self.input_scale), context_pad)

    @property
    def uses_pair_stats(self) -> bool:
        """Whether ``link_log_probs`` needs the pairs' neighbourhood statistics."""
        return self.pair_norm is not None

    def link_log_probs(self, pivot: Tensor, sequence: Tensor, sequence_pad: Tensor, stats: Tensor | None = None) -> Tensor:
        """Log-probabilities [B, L, 2] (index 1 = same identity) of the links pivot -> sequence[j];
        ``stats`` [B, L, N_STATS] (raw ``NeighbourhoodIndex.stats``) when ``uses_pair_stats``."""
        if self.predictor is not None:
            if self.pair_norm is not None:
                if stats is None:
                    raise ValueError("this FaceT model was built with pair_stats: pass the pairs' statistics")
                stats = self.pair_norm(stats)
            return F.log_softmax(self.predictor(pivot, sequence, sequence_pad, stats).float(), dim=-1)
        # only_re, eq. 11-12: e = 0.25 ||N(g_q) - N(g_k)||^2 in [0, 1]; P(same) = 1 - e.
        distance = 0.25 * (F.normalize(pivot.float(), dim=-1)[:, None] - F.normalize(sequence.float(), dim=-1)).pow(2).sum(-1)
        same = (1.0 - distance).clamp(1e-6, 1.0 - 1e-6)
        return torch.stack([torch.log1p(-same), torch.log(same)], dim=-1)
