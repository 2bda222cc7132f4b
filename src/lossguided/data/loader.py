"""DataLoaders with the settings a GPU user needs (workers, pinned memory, persistent workers, prefetch) and a
sampler that shards across ranks and reshuffles per epoch from a seed, so a resumed run sees the same order."""

from __future__ import annotations

import os

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from lossguided.distributed import DistInfo, get_info


def private_memory_mib() -> float:
    """This process's private memory (USS: Private_Clean + Private_Dirty of /proc/self/smaps_rollup) in MiB, or NaN
    where Linux's /proc is missing. A forked loader worker starts with (almost) none: what it gains over an epoch is
    what it copied from its parent, e.g. pages of Python objects whose reference counts it touched."""
    try:
        text = open("/proc/self/smaps_rollup").read()
    except OSError:
        return float("nan")
    kib = sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(("Private_Clean", "Private_Dirty")))
    return kib / 1024


def _batched(batch):
    """Datasets with `__getitems__` already return a collated (images, labels, ids) batch."""
    return batch


class NoSingletonBatchSampler(BatchSampler):
    """Batches of `batch_size` in the sampler's order, except that a last batch of one sample joins the batch
    before it: a lone sample breaks BatchNorm in training mode (one value per channel once the feature map is 1x1),
    and dropping it would leave a sample without a recorded loss."""

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.skip = 0  # batches of this epoch already trained before a mid-epoch resume

    def __iter__(self):
        pending: list[int] | None = None
        for i, batch in enumerate(super().__iter__()):
            if i < self.skip:
                continue
            if pending is not None:
                if len(batch) == 1 and self.batch_size > 1:  # only the last batch can be short
                    batch = pending + batch
                else:
                    yield pending
            pending = batch
        if pending is not None:
            yield pending

    def __len__(self) -> int:
        n = len(self.sampler)
        full, rest = divmod(n, self.batch_size)
        if self.batch_size == 1:
            return n
        return full + (rest > 1 or (rest == 1 and full == 0))


class Loader(DataLoader):
    """A DataLoader with the resumable API a trainer needs, so that it never reaches into the sampler: `set_epoch`
    picks the epoch's shuffle (from the seed: a resumed run sees the same order) and `skip` leaves out the first
    batches of the next pass (the ones trained before a mid-epoch resume)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.sampler.set_epoch(epoch)

    def skip(self, batches: int) -> None:
        if batches < 0:
            raise ValueError(f"cannot skip {batches} batches")
        self.batch_sampler.skip = batches


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
) -> Loader:
    """Every rank gets its shard (DistributedSampler pads the last one; the loss recorder de-duplicates)."""
    info = info or get_info()
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed, drop_last=False
    )
    in_memory = hasattr(dataset, "__getitems__")
    workers = 0 if in_memory else min(workers, os.cpu_count() or 1)
    return Loader(
        dataset,
        batch_sampler=NoSingletonBatchSampler(sampler, batch_size),
        num_workers=workers,
        collate_fn=_batched if in_memory else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )
