"""The loader's resumable API: an epoch's order comes from (seed, epoch), and skipping n batches resumes inside it."""

import torch
from torch.utils.data import Dataset

from lossguided.data.loader import create_loader


class Numbers(Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int):
        return torch.zeros(1), 0, i


def _ids(loader) -> list[list[int]]:
    return [batch[2].tolist() for batch in loader]


def test_set_epoch_and_skip_resume_inside_an_epoch():
    loader = create_loader(Numbers(), batch_size=5, shuffle=True, seed=3)
    loader.set_epoch(1)
    epoch1 = _ids(loader)
    assert sorted(sum(epoch1, [])) == list(range(23)) and [len(b) for b in epoch1] == [5, 5, 5, 5, 3]
    loader.set_epoch(2)
    assert _ids(loader) != epoch1
    loader.set_epoch(1)
    loader.skip(2)
    assert _ids(loader) == epoch1[2:]
    loader.skip(0)
    assert _ids(loader) == epoch1
