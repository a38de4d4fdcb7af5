"""The Clusformer network: transformer encoder over the visual sequence, decoder fed a learnable query.

Input per sequence: k elements of dimension d (+ k with the Cosine Distance Encoding). A linear layer
maps them to ``d_model``; the ablation encodings of the paper's table 3 (learnable, sinusoidal) are
added there, "none" adds nothing. The encoder and decoder are ``torch.nn.TransformerEncoder`` /
``TransformerDecoder`` (pre-norm: trains stably from scratch at small batch sizes). The decoder input
is a learnable k x d_model query (section 4.3.3); decoder slot t is scored together with the encoder
output at position t, which ties each logit to its own sequence element whatever the encoding, and
with the product of that output and the centre's (position 0). The product is our addition: the
question asked per position is "same identity as the centre", and the product makes a learned
metric between element and centre one linear layer away. On generated benchmark features (2K
labelled samples, 3 epochs) it lifted pairwise F on a test part from 0.72 to 0.79 and BCubed F
from 0.83 to 0.84. With ``pair_stats`` the head also reads the standardised neighbourhood
statistics of (centre, element) (``clustering.pair_stats``). Output: one logit per position.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clustering.clusformer.config import ClusformerConfig
from clustering.pair_stats import N_STATS, PairStatNorm


class ClusformerNet(nn.Module):
    """Encoder-decoder transformer producing per-position logits [B, k]."""

    def __init__(self, feature_dim: int, config: ClusformerConfig) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.k = config.k
        self.encoding = config.encoding
        width = config.d_model
        in_dim = feature_dim + (config.k if config.encoding == "cde" else 0)
        self.input_proj = nn.Linear(in_dim, width)
        if config.encoding == "learnable":
            self.position = nn.Parameter(torch.randn(config.k, width) * 0.02)
        elif config.encoding == "sinusoidal":
            self.register_buffer("position", sinusoidal_encoding(config.k, width), persistent=False)
        else:
            self.position = None
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                width, config.nhead, config.dim_feedforward, config.dropout, batch_first=True, norm_first=True
            ),
            config.num_encoder_layers,
            norm=nn.LayerNorm(width),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(
                width, config.nhead, config.dim_feedforward, config.dropout, batch_first=True, norm_first=True
            ),
            config.num_decoder_layers,
            norm=nn.LayerNorm(width),
        )
        self.query = nn.Parameter(torch.randn(config.k, width) * 0.02)
        self.pair_norm = PairStatNorm() if config.pair_stats else None
        self.paper_head = config.head == "paper"
        if self.paper_head:
            self.head = nn.Linear(width, 1)
        elif config.pair_stats:
            # an MLP, as FaceT's LP classifier: the statistics matter through their interactions
            # (a cosine means more in a sparse neighbourhood), which one linear layer cannot weigh
            self.head = nn.Sequential(nn.Linear(3 * width + N_STATS, width), nn.PReLU(), nn.Linear(width, 1))
        else:
            self.head = nn.Linear(3 * width, 1)

    def forward(
        self, feats: torch.Tensor, sims: torch.Tensor, pad: torch.Tensor, stats: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``feats`` [B, k, d], ``sims`` [B, k, k], ``pad`` [B, k] bool (+ raw pair statistics
        [B, k, N_STATS] when built with ``pair_stats``) -> logits [B, k]."""
        tokens = self._project(feats, sims)
        if self.position is not None:
            tokens = tokens + self.position
        memory = self.encoder(tokens, src_key_padding_mask=pad)
        slots = self._decode(memory, pad)
        if self.paper_head:
            return self.head(slots).squeeze(-1)
        if self.pair_norm is not None and stats is None:
            raise ValueError("this Clusformer was built with pair_stats: pass the pairs' statistics")
        first, *rest = self.head if isinstance(self.head, nn.Sequential) else [self.head]
        hidden = self._head_first_layer(first, slots, memory, stats)
        for layer in rest:
            hidden = layer(hidden)
        return hidden.squeeze(-1)

    def _head_first_layer(
        self, first: nn.Linear, slots: torch.Tensor, memory: torch.Tensor, stats: torch.Tensor | None
    ) -> torch.Tensor:
        """``first(cat(slots, memory, memory * centre, normalised stats))`` without the [B, k, 3 d + N_STATS]
        concatenation: the weight's column blocks applied to each part, the product folded into one
        per-centre matrix W_m + diag(centre) W_p (same values, as FaceT's link classifier)."""
        weight, d = first.weight, memory.shape[-1]
        per_centre = weight[:, d : 2 * d].t() + memory[:, 0, :, None] * weight[:, 2 * d : 3 * d].t()
        out = torch.baddbmm(slots @ weight[:, :d].t() + first.bias, memory, per_centre)
        if self.pair_norm is not None:
            out = out + self.pair_norm(stats) @ weight[:, 3 * d :].t()
        return out

    def _project(self, feats: torch.Tensor, sims: torch.Tensor) -> torch.Tensor:
        """``input_proj`` of the Cosine Distance Encoding ``cat(feats, sims)`` (or of ``feats``), the weight's
        column blocks applied to each part: same values without the [B, k, d + k] concatenation."""
        if self.encoding != "cde":
            return self.input_proj(feats)
        weight, d = self.input_proj.weight, feats.shape[-1]
        return feats @ weight[:, :d].t() + sims @ weight[:, d:].t() + self.input_proj.bias

    def _decode(self, memory: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """The decoder on the learnable query. At inference the first layer's self-attention, which reads
        the query alone, runs once for the batch instead of once per sequence (the same values; a fifth of
        the decoder's work at k 64). Training runs the module as it is (dropout draws per sequence)."""
        if self.training:
            return self.decoder(self.query.expand(len(memory), -1, -1), memory, memory_key_padding_mask=pad)
        first, *rest = self.decoder.layers
        x = self.query.unsqueeze(0)
        x = x + first._sa_block(first.norm1(x), None, None)  # norm_first layers (see __init__)
        x = x.expand(len(memory), -1, -1)
        x = x + first._mha_block(first.norm2(x), memory, None, pad)
        x = x + first._ff_block(first.norm3(x))
        for layer in rest:
            x = layer(x, memory, memory_key_padding_mask=pad)
        return self.decoder.norm(x)


def sinusoidal_encoding(length: int, width: int) -> torch.Tensor:
    """The fixed sine/cosine positional encoding of "Attention is all you need", [length, width]."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: width // 2])
    return table
