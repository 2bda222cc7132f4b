"""Atomic file writes: every artifact appears whole or not at all, so a killed run never leaves half a file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path` (same filesystem, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes files owner-only; artifacts get ordinary permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_path` leaves when its process is killed mid-write (SIGKILL, power loss:
    no `finally` runs). Call it only where nothing else is writing into `folder` at the time."""
    folder = Path(folder)
    ours = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # `.{name}.{mkstemp's 8 random characters}.tmp`
    stale = sorted(p for p in folder.glob(".*.tmp") if ours.fullmatch(p.name)) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one line; a line is small enough that a crash can at worst lose it, never corrupt earlier ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_npz(file: str | os.PathLike, /, **arrays: np.ndarray) -> None:
    with atomic_path(file) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
