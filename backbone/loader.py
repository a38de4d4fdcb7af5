"""The training data of one rank: manifest rows as (image, label, weight) items, augmented from
(seed, epoch, index) so that an epoch's batches are the same whether a run was resumed or not."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from backbone.augment import SeededTransform, train_transform
from backbone.distributed import Distributed
from backbone.train_config import TrainConfig
from backbone.training_rows import TrainingRows


class EpochSeededRows(Dataset):
    """Training items (image, label, weight); reseeds the augmentation from (seed, epoch, index)."""

    def __init__(self, images: Dataset, transform: SeededTransform, rows: TrainingRows, seed: int) -> None:
        self.images, self.transform, self.seed, self.epoch = images, transform, seed, 0
        self.labels = torch.from_numpy(rows.labels)
        self.weights = torch.from_numpy(rows.weights)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.transform.reseed([self.seed, self.epoch, index])
        image = self.images[index][0]
        return image, self.labels[index], self.weights[index]


# ----------------------------------------------------------------------------------------------
# Entry point


def make_loader(
    config: TrainConfig, rows: TrainingRows, image_root: Path | None, record_file: Path | None, world: Distributed,
    per_rank_batch: int, device: torch.device,
) -> tuple[EpochSeededRows, DistributedSampler, DataLoader]:
    """The training items of this rank: dataset (reseeded per epoch), sampler (shuffled per epoch) and loader."""
    from backbone.data.dataset import ManifestImageDataset  # the data layer, imported where needed

    transform = train_transform(config.image_size, config.aug_strength, config.seed)
    images = ManifestImageDataset(rows.frame, image_root, transform=transform, record_file=record_file)
    data = EpochSeededRows(images, transform, rows, config.seed)
    sampler = DistributedSampler(data, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(data, batch_size=per_rank_batch, sampler=sampler, drop_last=True,
                        num_workers=config.num_workers, pin_memory=device.type == "cuda")
    return data, sampler, loader
