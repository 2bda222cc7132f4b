"""Torch datasets over a manifest. Each item is `(uint8 image [C,S,S], label, id)`: the id travels with the sample
so that everything recorded per sample (losses, features) is keyed by it, whatever the sampler or the rank."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from lossguided.data.decode import decode_image as _decode_image
from lossguided.data.manifest import DataError, Manifest


def decode_image(path: str, size: int) -> torch.Tensor:
    """Open, decode and resize to size x size RGB (uint8 [3,S,S]); see `data.decode` for how and why."""
    return _decode_image(path, size)


class ImageFileDataset(Dataset):
    """Images read from files. A file that fails to decode raises a DataError naming its path and id."""

    def __init__(self, manifest: Manifest, *, image_size: int) -> None:
        if manifest.paths is None:
            raise ValueError("ImageFileDataset needs a manifest with paths")
        self.paths, self.labels, self.ids = manifest.paths, manifest.labels, manifest.ids
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        try:
            img = decode_image(self.paths[i], self.image_size)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{self.paths[i]}: id {self.ids[i]}: cannot decode image ({e})") from None
        return img, int(self.labels[i]), int(self.ids[i])


class ArrayDataset(Dataset):
    """In-memory uint8 images, resized once up front (bilinear, antialiased) so that an epoch costs no resizing."""

    def __init__(self, manifest: Manifest, *, image_size: int, chunk: int = 4096) -> None:
        images = manifest.images
        if images.ndim == 3:
            images = images[:, None]
        else:
            images = images.transpose(0, 3, 1, 2)
        if images.shape[-1] != image_size or images.shape[-2] != image_size:
            out = []
            for s in range(0, len(images), chunk):
                x = torch.from_numpy(np.array(images[s : s + chunk])).float()
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                                  align_corners=False)  # fmt: skip
                out.append(x.round_().clamp_(0, 255).to(torch.uint8))
            self.images = torch.cat(out) if out else torch.empty(0, images.shape[1], image_size, image_size)
        else:
            self.images = torch.from_numpy(np.array(images))
        self.labels = torch.as_tensor(manifest.labels)
        self.ids = torch.as_tensor(manifest.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], self.ids[i]

    def __getitems__(self, index: list[int]):
        """Batched fetch: one gather instead of B item calls (the DataLoader uses it when present)."""
        idx = torch.as_tensor(index)
        return self.images[idx], self.labels[idx], self.ids[idx]


def make_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    if getattr(manifest, "store", None) is not None:  # a `lossguided preprocess` folder
        from lossguided.data.preprocessed import make_preprocessed_dataset

        return make_preprocessed_dataset(manifest, image_size=image_size)
    return ArrayDataset(manifest, image_size=image_size) if manifest.images is not None else \
        ImageFileDataset(manifest, image_size=image_size)  # fmt: skip


def check_images(manifest: Manifest) -> None:
    """Open every image's header before training, so an unreadable file fails now with its row, not in a worker."""
    if manifest.paths is None or getattr(manifest, "store", None) is not None:  # preprocessed: checked when written
        return
    for i, p in enumerate(manifest.paths):
        try:
            with Image.open(p) as img:
                img.size  # noqa: B018 - reading the header is the check
        except (OSError, UnidentifiedImageError) as e:
            row = manifest.rows[i] if manifest.rows is not None else i
            raise DataError(f"{manifest.source}: row {row}: id {manifest.ids[i]}: unreadable image {p} ({e})") from None
