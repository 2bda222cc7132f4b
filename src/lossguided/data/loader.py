"""DataLoaders with the settings a GPU user needs (workers, pinned memory, persistent workers, prefetch) and a
sampler that shards across ranks and reshuffles per epoch from a seed, so a resumed run sees the same order."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lossguided.engine.distributed import DistInfo, get_info


def _batched(batch):
    """Datasets with `__getitems__` already return a collated (images, labels, ids) batch."""
    return batch


def create_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = True,
    persistent_workers: bool = True,
    prefetch_factor: int = 2,
    info: DistInfo | None = None,
) -> DataLoader:
    """Every rank gets its shard (DistributedSampler pads the last one; the loss recorder de-duplicates)."""
    info = info or get_info()
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
                                 drop_last=False)  # fmt: skip
    in_memory = hasattr(dataset, "__getitems__")
    workers = 0 if in_memory else min(workers, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_batched if in_memory else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        drop_last=False,
    )
