"""Optional per-image training augmentation through timm: RandAugment from timm's config string (`rand-m9-mstd0.5`,
the `--aa` of timm's train.py), off by default. It runs per image where images are read (DataLoader workers, or the
main process for in-memory data), before the batch's flip and normalization (`transforms.BatchTransform`), and only
on the training set: validation, loss recording and evaluation see the images as they are."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def check_randaugment(config_str: str) -> None:
    """Raise ValueError naming `config_str` when timm cannot parse it."""
    try:
        _timm_randaugment(config_str, image_size=32)
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        raise ValueError(
            f"randaugment {config_str!r} is not a timm RandAugment config such as 'rand-m9-mstd0.5' "
            f"(rand-m<magnitude>[-n<ops>][-mstd<std>][-inc1]){f': {e}' if str(e) else ''}"
        ) from None


def _timm_randaugment(config_str: str, *, image_size: int) -> Callable[[Image.Image], Image.Image]:
    from timm.data.auto_augment import rand_augment_transform

    if not config_str.startswith("rand"):
        raise ValueError("it does not start with 'rand'")
    # timm's create_transform defaults: translations up to 45% of the side, fill with the ImageNet mean colour
    hparams = {"translate_const": int(image_size * 0.45), "img_mean": (124, 116, 104)}
    return rand_augment_transform(config_str, hparams)


def augment_image(image: torch.Tensor, op: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    """uint8 [C, H, W] (C = 1 or 3) -> augmented uint8 [3, H, W]. timm draws the ops from numpy's global generator
    and their strengths from Python's `random`: both are seeded from torch's generator first, so a seeded run (and
    each DataLoader worker, which torch seeds) augments reproducibly."""
    seed = int(torch.randint(2**62, ()))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    pixels = image.numpy()
    pil = Image.fromarray(pixels[0]).convert("RGB") if len(pixels) == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
    return torch.from_numpy(np.asarray(op(pil)).transpose(2, 0, 1).copy())


class AugmentedDataset(Dataset):
    """A dataset of (uint8 image [C, H, W], label, id) whose images go through RandAugment."""

    def __init__(self, dataset: Dataset, config_str: str, *, image_size: int) -> None:
        self.dataset, self.config_str = dataset, config_str
        self.op = _timm_randaugment(config_str, image_size=image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label, sample_id = self.dataset[i]
        return augment_image(image, self.op), label, sample_id


class AugmentedBatchDataset(AugmentedDataset):
    """The same over an in-memory dataset that fetches whole batches (`__getitems__`, which the loader looks for)."""

    def __getitems__(self, index: list[int]):
        images, labels, ids = self.dataset.__getitems__(index)
        return torch.stack([augment_image(x, self.op) for x in images]), labels, ids


def with_randaugment(dataset: Dataset, config_str: str | None, *, image_size: int) -> Dataset:
    """`dataset` with RandAugment on its images, or `dataset` itself when `config_str` is None."""
    if config_str is None:
        return dataset
    batched = hasattr(dataset, "__getitems__")
    return (AugmentedBatchDataset if batched else AugmentedDataset)(dataset, config_str, image_size=image_size)
