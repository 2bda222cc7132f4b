"""Checkpoints: plain tensors and primitives only, written atomically, read with `torch.load(weights_only=True)`
so that loading a file can never execute code. The class map and resolved config travel inside every checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lossguided.data.manifest import ClassMap
from lossguided.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (missing, not ours, another class map)."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for foreign or corrupt files
        raise CheckpointError(f"{path}: not a readable lossguided checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "classes" not in state:
        raise CheckpointError(f"{path}: not a lossguided checkpoint (no model weights or class map)")
    return state


def classes_of(state: dict[str, Any]) -> ClassMap:
    return ClassMap(tuple(state["classes"]))


def check_same_classes(state: dict[str, Any], classes: ClassMap, *, path: str, source: str) -> None:
    """A checkpoint trained on another class map would silently mislabel everything: refuse it."""
    ckpt = classes_of(state)
    if ckpt != classes:
        diff = next((i for i, (a, b) in enumerate(zip(ckpt.names, classes.names, strict=False)) if a != b), None)
        where = f"first difference at class {diff}: {ckpt.names[diff]!r} vs {classes.names[diff]!r}" \
            if diff is not None else f"{len(ckpt)} vs {len(classes)} classes"  # fmt: skip
        raise CheckpointError(f"{path}: class map differs from {source} ({where})")
