"""Imprinted class centres: start a margin head at the mean embedding of each class under the
starting model (Qi et al., "Low-Shot Learning with Imprinted Weights", CVPR 2018).

When a retraining fine-tunes the first model, a randomly initialised head scores every row near
cos 0, so the first epochs' gradients mostly move the head and push the already trained trunk
around. Centres at the class means start each row near its own cluster's cosine, and the few
epochs of a fine-tuning go to the rows that the model does not already place well. (On the demo
the first epoch's loss fell from 4.4 to 1.6, but the retrained rank-1 did not change beyond a run's
noise; see docs/training.md.) Under DDP each rank embeds its own share of the rows (every world_size-th)
and the class sums are added up across ranks, so the pass costs 1 / world_size of the time per rank.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from backbone.distributed import Distributed
from backbone.extract import embed_with_flip
from backbone.margin import MarginHead, TwoHeadMargin
from backbone.model import FaceEmbedder
from backbone.training_rows import TrainingRows

ONE_PROCESS = Distributed()


@torch.inference_mode()
def class_mean_embeddings(
    embedder: FaceEmbedder, rows: TrainingRows, image_root: Path | None, record_file: Path | None, image_size: int,
    device: torch.device, batch_size: int = 256, num_workers: int | str = 0, world: Distributed = ONE_PROCESS,
    decode: str = "auto",
) -> torch.Tensor:
    """L2-normalised mean of the (flip-summed, normalised) eval-mode embeddings of each class's rows,
    float32 [num_classes, D], each row weighted by its loss weight (a class whose weights are all 0
    falls back to the unweighted mean). Under DDP (``world``) every rank must call it: each embeds rows
    rank, rank + world_size, ... and all ranks get the same means."""
    from backbone.data.dataset import manifest_images  # the data layer, imported where needed
    from backbone.loader import eval_loader
    from backbone.model_input import device_batches

    share = slice(world.rank, None, world.world_size)
    images = manifest_images(rows.frame.iloc[share], image_root, record_file)
    loader = eval_loader(images, rows.labels[share], image_size, batch_size, num_workers, decode, device)
    labels = torch.from_numpy(rows.labels[share]).to(device)
    weights = torch.from_numpy(rows.weights[share]).to(device)  # float32 [n]
    # Weighted and plain sums in one tensor, added to batch by batch (memory: classes x D, not rows x D);
    # one all-reduce (on the device, which nccl needs) adds up the ranks' shares.
    sums = torch.zeros(2, rows.num_classes, embedder.config.embedding_dim, device=device)
    was_training = embedder.training
    embedder.eval()
    try:
        for batch, model_input in device_batches(loader, device, image_size):
            embeddings, index = embed_with_flip(embedder, model_input), batch.index.to(device)
            sums[0].index_add_(0, labels[index], embeddings * weights[index, None])
            sums[1].index_add_(0, labels[index], embeddings)
    finally:
        embedder.train(was_training)
    if world.world_size > 1:
        dist.all_reduce(sums)
    weighted, plain = sums.cpu()
    weightless = weighted.norm(dim=1) == 0
    weighted[weightless] = plain[weightless]
    return F.normalize(weighted, dim=1)


def imprint(head: MarginHead | TwoHeadMargin, centres: torch.Tensor) -> None:
    """Copy class centres [C, D] into the head (two heads: rows 0..L-1 to the labelled one, the rest to
    the pseudo one; with sub-centres, into each of a class's sub-centres)."""
    centres = centres.to(device=_weight(head).device, dtype=_weight(head).dtype)
    if isinstance(head, TwoHeadMargin):
        _fill(head.labelled, centres[: head.num_labelled])
        _fill(head.pseudo, centres[head.num_labelled:])
    else:
        _fill(head, centres)


def _fill(head: MarginHead, centres: torch.Tensor) -> None:
    """Every sub-centre of a class starts at its centre; with several, each keeps its own small
    random start on top, or they would stay equal (the max over equal cosines shares the gradient)."""
    with torch.no_grad():
        if head.sub_centres == 1:
            head.weight.copy_(centres)
        else:
            head.weight.view(len(centres), head.sub_centres, -1).add_(centres[:, None, :])


def _weight(head: MarginHead | TwoHeadMargin) -> torch.Tensor:
    return head.labelled.weight if isinstance(head, TwoHeadMargin) else head.weight
