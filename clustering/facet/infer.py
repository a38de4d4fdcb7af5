"""Scalable FaceT inference: RE once per node (all g), then LP per pivot over its hop1 neighbours.

Large arrays stay bounded: raw features and enhanced features larger than ``memmap_bytes`` are
read from / written to ``.npy`` memory maps and gathered batch by batch; the output is one
float32 probability per (pivot, neighbour) of the table.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from clustering.facet.config import FaceTConfig
from clustering.facet.model import FaceTModel
from clustering.facet.neighbours import enhance_nodes, gather_sequences, sequence_stats
from clustering.facet.row_store import RowStore
from clustering.pair_stats import NeighbourhoodIndex
from semiface.devices import autocast_dtype

RE_BATCH_FACTOR = 8  # RE sequences are short (hop2 + 1): batch 8x more nodes than LP pivots


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA, nothing on CPU."""
    dtype = autocast_dtype(device)
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.inference_mode()
def enhance_all(
    model: FaceTModel, features: RowStore, table: Tensor, hop2: int, batch: int, out: Tensor | np.ndarray
) -> None:
    """Write g of every node into ``out`` [N, d] (a device tensor or a memory map)."""
    n = table.shape[0]
    for start in tqdm(range(0, n, batch), desc="facet RE", unit="batch", disable=None, leave=False):
        nodes = torch.arange(start, min(start + batch, n), device=table.device)
        with autocast(table.device):
            g = enhance_nodes(model, features, table, nodes, hop2).float()
        if isinstance(out, Tensor):
            out[start : start + len(nodes)] = g
        else:
            out[start : start + len(nodes)] = g.cpu().numpy()


@torch.inference_mode()
def link_scores(
    model: FaceTModel, enhanced: RowStore, table: Tensor, hop1: int, batch: int,
    pair_stats: Callable[[Tensor, Tensor], Tensor] | None = None, logits: bool = False,
) -> np.ndarray:
    """P(same identity) float32 [N, hop1 + 1] of every pivot (row) to ``table[:, :hop1 + 1]``;
    0 at the pivot itself (column 0) and at padding. Fewer columns when the table is narrower.
    ``pair_stats(pivots, ids)`` gives the pairs' statistics to a model that uses them. ``logits``:
    the log-odds instead (-inf where the probability is 0), which do not saturate near p = 1."""
    n = table.shape[0]
    out = np.zeros((n, min(hop1 + 1, table.shape[1])), dtype=np.float32)
    for start in tqdm(range(0, n, batch), desc="facet LP", unit="batch", disable=None, leave=False):
        pivots = torch.arange(start, min(start + batch, n), device=table.device)
        with autocast(table.device):
            ids, sequence, pad = gather_sequences(pivots, table, hop1, enhanced.__getitem__)
            stats = pair_stats(pivots, ids) if pair_stats is not None else None
            log_probs = model.link_log_probs(sequence[:, 0], sequence, pad, stats)
        prob = log_probs[..., 1] - log_probs[..., 0] if logits else log_probs[..., 1].exp()
        empty = -torch.inf if logits else 0.0
        prob = prob.float().masked_fill(pad, empty)
        prob[:, 0] = empty
        out[start : start + len(pivots)] = prob.cpu().numpy()
    return out


@contextlib.contextmanager
def _enhanced_store(n: int, d: int, device: torch.device, cfg: FaceTConfig) -> Iterator[tuple[Tensor | np.ndarray, RowStore]]:
    """Room for all g: on the device when n * d floats fit in ``memmap_bytes``, else a temporary memory map."""
    if n * d * 4 <= cfg.memmap_bytes:
        out = torch.empty((n, d), dtype=torch.float32, device=device)
        yield out, RowStore(out, device)
        return
    parent = Path(cfg.work_dir) if cfg.work_dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facet-g-", dir=parent) as tmp:
        out = np.lib.format.open_memmap(Path(tmp) / "enhanced.npy", mode="w+", dtype=np.float32, shape=(n, d))
        yield out, RowStore(out, device)
        del out


def link_probabilities(
    model: FaceTModel, features: np.ndarray, table: np.ndarray, cfg: FaceTConfig, device: torch.device,
    index: NeighbourhoodIndex | None = None, logits: bool = False,
) -> np.ndarray:
    """The full inference pass over ``features`` [N, D] with neighbour ``table`` [N, >= hop1 + 1]
    (and the neighbourhood ``index`` of the pair statistics, for a model that uses them):
    ``link_scores`` of every node (log-odds with ``logits``)."""
    model.eval()
    if model.uses_pair_stats and index is None:
        raise ValueError("this FaceT model uses pair statistics: pass the neighbourhood index")
    store = RowStore.from_array(features, device, cfg.memmap_bytes)
    table_t = torch.as_tensor(table, dtype=torch.int64).to(device)
    stats = None if index is None else (lambda pivots, ids: sequence_stats(index, store, pivots, ids))
    with _enhanced_store(len(features), model.model_dim, device, cfg) as (out, enhanced):
        enhance_all(model, store, table_t, cfg.hop2, cfg.inference_batch * RE_BATCH_FACTOR, out)
        return link_scores(model, enhanced, table_t, cfg.hop1, cfg.inference_batch, stats, logits=logits)
