"""Checkpoints: plain tensors and primitives only, written atomically, read with `torch.load(weights_only=True)`
so that loading a file can never execute code. The class map and resolved config travel inside every checkpoint.

Before writing, the free space is checked against the state's size (a full disk is one line, `DiskFullError`, and
the previous file stays); on loading, weights that are not finite (a diverged run, a bit flip) are refused."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lossguided import layout
from lossguided.data.manifest import ClassMap
from lossguided.io import atomic_path

OVERHEAD = 256 * 2**10  # zip entries, pickled structure and names beside the tensors' bytes


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (missing, not ours, another class map)."""


def estimate_size(state: Any) -> int:
    """Bytes `torch.save(state)` takes, to within the pickled structure: the tensors' storage plus an overhead."""
    seen: set[int] = set()

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            key = x.untyped_storage().data_ptr() if x.device.type != "meta" else id(x)
            if key in seen:
                return 0
            seen.add(key)
            return x.untyped_storage().nbytes()
        if isinstance(x, Mapping):
            return sum(walk(v) for v in x.values())
        if isinstance(x, list | tuple):
            return sum(walk(v) for v in x)
        return 0

    return walk(state) + OVERHEAD


def ensure_room(folder: str | os.PathLike, states: list[dict[str, Any]]) -> None:
    """DiskFullError now, before any file is started, when `states` will not fit beside the files they replace."""
    from lossguided.disk import ensure_free

    ensure_free(folder, sum(estimate_size(s) for s in states))


def write(tmp: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialize into an already reserved path (a temporary of `io.atomic_paths`): through a file object, so a
    full disk surfaces as the OSError behind torch's 'unexpected pos' and `atomic_paths` names it."""
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    ensure_room(Path(path).parent, [state])
    with atomic_path(path) as tmp:
        write(tmp, state)


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
    if not isinstance(state["model"], Mapping):
        raise CheckpointError(f"{path}: not a lossguided checkpoint (model weights are not a state dict)")
    bad = non_finite(state["model"])
    if bad:
        raise CheckpointError(
            f"{path}: {bad}; the run that wrote it diverged or the file is damaged, use another checkpoint"
        )
    return state


def non_finite(weights: Mapping[str, Any]) -> str | None:
    """'N of M values in K tensors are not finite (first: name)', or None when every float weight is finite."""
    count, total, names = 0, 0, []
    for name, t in weights.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            total += t.numel()
            if n:
                count += n
                names.append(name)
    if not count:
        return None
    return f"{count} of {total} weight values in {len(names)} tensors are not finite (first: {names[0]})"


def classes_of(state: dict[str, Any]) -> ClassMap:
    return ClassMap(tuple(state["classes"]))


def check_same_classes(state: dict[str, Any], classes: ClassMap, *, path: str, source: str) -> None:
    """A checkpoint trained on another class map would silently mislabel everything: refuse it."""
    ckpt = classes_of(state)
    if ckpt != classes:
        diff = next((i for i, (a, b) in enumerate(zip(ckpt.names, classes.names, strict=False)) if a != b), None)
        where = (
            f"first difference at class {diff}: {ckpt.names[diff]!r} vs {classes.names[diff]!r}"
            if diff is not None
            else f"{len(ckpt)} vs {len(classes)} classes"
        )
        raise CheckpointError(f"{path}: class map differs from {source} ({where})")


def drop_optimizer_state(stage_dir: str | os.PathLike) -> int:
    """Rewrite the checkpoints of a finished stage with weights only (no optimizer state, which is 2-4x the
    model for Adam-like optimizers); returns the bytes freed. Only for stages that are done: a trainer cannot
    resume from such a checkpoint, and a finished stage is never resumed."""
    marker = Path(stage_dir) / layout.SLIMMED
    if marker.is_file():
        return 0
    freed = 0
    for path in sorted(Path(stage_dir).glob("*.pt")):
        before = path.stat().st_size
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "optimizer" not in state:
            continue
        state.pop("optimizer")
        state["weights_only"] = True  # resuming this file would restart the optimizer: say so to readers
        save(path, state)
        freed += before - path.stat().st_size
    marker.write_text("the checkpoints here keep weights only (lossguided.engine.checkpoint.drop_optimizer_state)\n")
    return freed


def slim_finished_stages(run_dir: str | os.PathLike) -> int:
    """`drop_optimizer_state` for every stage of a run folder that has its done.json; bytes freed. The ensemble's
    seed folders keep theirs: a rerun with other seeds or TTA trains that stage again, resuming its seeds."""
    run = layout.RunLayout(run_dir)
    finished = [run.root / name for name in run.present() if (run.root / name / layout.DONE).is_file()]
    return sum(drop_optimizer_state(d) for d in finished)
