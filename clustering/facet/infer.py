"""Scalable FaceT inference: RE once per node (all g), then LP per pivot over its hop1 neighbours.

Where the arrays live (``clustering.placement``): the neighbour table (int32 ids, a view of the kNN
graph) and the pair-statistics index always on the device; then the raw features and the enhanced
features g each on the device while they fit in its free memory minus the headroom. What does not
fit stays on the host and is gathered batch by batch: raw features from the caller's array, g from
host RAM or, when larger than ``memmap_bytes``, from a ``.npy`` memory map on disk. On the CPU the
caller's features are used in place and g follows ``memmap_bytes``. The output is one float32
probability per (pivot, neighbour) of the table.
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
from clustering.placement import device_budget, fit_on_device
from semiface.devices import autocast_to, inference_dtype

RE_BATCH_FACTOR = 8  # RE sequences are short (hop2 + 1): batch 8x more nodes than LP pivots
ROW_CHUNK = 65_536  # rows per step where a pass over all N rows is chunked
# LP pivots per batch on the CPU, at most: the attention scores [B, heads, L, L] of 512 pivots of
# 151 (~90 MB) leave the cache; 64-128 ran ~25 % faster end to end (2-core EPYC, hop1 150)
CPU_LP_BATCH = 128


@torch.inference_mode()
def enhance_all(
    model: FaceTModel, features: RowStore, table: Tensor, hop2: int, batch: int, out: Tensor | np.ndarray,
    amp: torch.dtype | None = None,
) -> None:
    """Write g of every node into ``out`` [N, d] (a device tensor or a memory map), under autocast to ``amp``."""
    n = table.shape[0]
    for start in tqdm(range(0, n, batch), desc="facet RE", unit="batch", disable=None, leave=False):
        nodes = torch.arange(start, min(start + batch, n), device=table.device)
        with autocast_to(table.device, amp):
            g = enhance_nodes(model, features, table, nodes, hop2).float()
        if isinstance(out, Tensor):
            out[start : start + len(nodes)] = g
        else:
            out[start : start + len(nodes)] = g.cpu().numpy()


@torch.inference_mode()
def link_scores(
    model: FaceTModel, enhanced: RowStore, table: Tensor, hop1: int, batch: int,
    pair_stats: Callable[[Tensor, Tensor], Tensor] | None = None, logits: bool = False, amp: torch.dtype | None = None,
) -> np.ndarray:
    """P(same identity) float32 [N, hop1 + 1] of every pivot (row) to ``table[:, :hop1 + 1]``;
    0 at the pivot itself (column 0) and at padding. Fewer columns when the table is narrower.
    ``pair_stats(pivots, ids)`` gives the pairs' statistics to a model that uses them. ``logits``:
    the log-odds instead (-inf where the probability is 0), which do not saturate near p = 1."""
    n = table.shape[0]
    out = np.zeros((n, min(hop1 + 1, table.shape[1])), dtype=np.float32)
    for start in tqdm(range(0, n, batch), desc="facet LP", unit="batch", disable=None, leave=False):
        pivots = torch.arange(start, min(start + batch, n), device=table.device)
        with autocast_to(table.device, amp):
            ids, sequence, pad = _lp_inputs(pivots, table, hop1, enhanced)
            stats = pair_stats(pivots, ids) if pair_stats is not None else None
            # no padding in the batch (a full kNN graph): no attention mask, the faster kernel, same math
            mask = pad if bool(pad.any()) else None
            log_probs = model.link_log_probs(sequence[:, 0], sequence, mask, stats)
        prob = log_probs[..., 1] - log_probs[..., 0] if logits else log_probs[..., 1].exp()
        empty = -torch.inf if logits else 0.0
        prob = prob.float().masked_fill(pad, empty)
        prob[:, 0] = empty
        out[start : start + len(pivots)] = prob.cpu().numpy()
    return out


def _lp_inputs(pivots: Tensor, table: Tensor, hop1: int, enhanced: RowStore) -> tuple[Tensor, Tensor, Tensor]:
    """``gather_sequences``' (ids, sequence, pad): with g held as a tensor gathered straight by id
    (the same values, without the per-batch ``unique`` that spares a memory map repeated reads)."""
    if not isinstance(enhanced.rows, Tensor) or enhanced.rows.device != table.device:
        return gather_sequences(pivots, table, hop1, enhanced.__getitem__)
    ids = table[pivots, : hop1 + 1]
    pad = ids < 0
    sequence = enhanced.rows[ids.clamp(min=0)]
    return ids, (sequence.masked_fill(pad.unsqueeze(-1), 0.0) if bool(pad.any()) else sequence), pad


def _stats_of_pairs(
    index: NeighbourhoodIndex, store: RowStore, features: np.ndarray, cosines: np.ndarray | None, device: torch.device
) -> Callable[[Tensor, Tensor], Tensor]:
    """``stats(pivots, ids)`` of the pair statistics: cosines read from ``cosines`` when given (host
    rows of the batch, sent to the device), else computed from the raw features."""
    if cosines is not None:
        def from_graph(pivots: Tensor, ids: Tensor) -> Tensor:
            rows = np.asarray(cosines[pivots.cpu().numpy(), : ids.shape[1]], dtype=np.float32)
            return index.stats(pivots, ids, torch.from_numpy(rows).to(device))
        return from_graph
    inverse_norms = _inverse_norms(features, device)
    return lambda pivots, ids: sequence_stats(index, store, pivots, ids, inverse_norms)


def _inverse_norms(features: np.ndarray, device: torch.device) -> Tensor:
    """1 / max(||row||, eps) of every row, float32 on ``device`` (computed chunk by chunk)."""
    parts = [np.linalg.norm(np.asarray(features[start : start + ROW_CHUNK], dtype=np.float32), axis=1)
             for start in range(0, len(features), ROW_CHUNK)]
    norms = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.float32))
    return (1.0 / norms.clamp(min=1e-12)).to(device)


@contextlib.contextmanager
def _enhanced_store(
    n: int, d: int, device: torch.device, cfg: FaceTConfig, on_device: bool
) -> Iterator[tuple[Tensor | np.ndarray, RowStore]]:
    """Room for all g: on a GPU when ``on_device``; on the host in RAM when n * d floats fit in
    ``memmap_bytes``, else in a temporary memory map (in ``work_dir`` when set)."""
    if (device.type != "cpu" and on_device) or n * d * 4 <= cfg.memmap_bytes:
        out = torch.empty((n, d), dtype=torch.float32, device=device if device.type == "cpu" or on_device else "cpu")
        yield out, RowStore(out, device)
        return
    parent = Path(cfg.work_dir) if cfg.work_dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facet-g-", dir=parent) as tmp:
        out = np.lib.format.open_memmap(Path(tmp) / "enhanced.npy", mode="w+", dtype=np.float32, shape=(n, d))
        yield out, RowStore(out, device)
        del out


def placement(n: int, feature_dim: int, model_dim: int, table_width: int, device: torch.device) -> tuple[bool, bool]:
    """(raw features on the device, g on the device) for ``n`` rows: ``clustering.placement``'s rule,
    with the int32 neighbour table counted first (it always goes to the device)."""
    table, features, enhanced = n * table_width * 4, n * feature_dim * 4, n * model_dim * 4
    _, on_features, on_enhanced = fit_on_device([table, features, enhanced], device_budget(device))
    return on_features, on_enhanced


def link_probabilities(
    model: FaceTModel, features: np.ndarray, table: np.ndarray, cfg: FaceTConfig, device: torch.device,
    index: NeighbourhoodIndex | None = None, logits: bool = False, cosines: np.ndarray | None = None,
) -> np.ndarray:
    """The full inference pass over ``features`` [N, D] with neighbour ``table`` [N, >= hop1 + 1]
    (and the neighbourhood ``index`` of the pair statistics, for a model that uses them):
    ``link_scores`` of every node (log-odds with ``logits``). ``cosines`` [N, >= hop1 + 1], the
    cosine of each row to the table's ids (the kNN graph's similarities), spares the statistics
    gathering the neighbours' raw features, most of their cost on the CPU."""
    model.eval()
    if model.uses_pair_stats and index is None:
        raise ValueError("this FaceT model uses pair statistics: pass the neighbourhood index")
    on_features, on_enhanced = placement(len(features), features.shape[1], model.model_dim, table.shape[1], device)
    store = RowStore.place(features, device, on_features)
    table_t = torch.as_tensor(table).to(device)
    stats = None if index is None else _stats_of_pairs(index, store, features, cosines, device)
    with _enhanced_store(len(features), model.model_dim, device, cfg, on_enhanced) as (out, enhanced):
        amp = inference_dtype(device, cfg.inference_precision)
        enhance_all(model, store, table_t, cfg.hop2, cfg.inference_batch * RE_BATCH_FACTOR, out, amp)
        lp_batch = cfg.inference_batch if device.type != "cpu" else min(cfg.inference_batch, CPU_LP_BATCH)
        return link_scores(model, enhanced, table_t, cfg.hop1, lp_batch, stats, logits=logits, amp=amp)
