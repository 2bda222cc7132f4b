"""Atomic file writes: every artifact appears whole or not at all, so a killed run never leaves half a file, and a
full disk is one line naming the file (`disk.DiskFullError`), never a traceback or a mix of old and new files.
Also the spreadsheet-safe CSV cell (`safe_cell`) that the CSVs people open in Excel are written with."""

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
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EFBIG of a file size limit, EDQUOT) met inside the block into `DiskFullError`
    naming `path`, also when the OSError hides behind another error (torch.save's 'unexpected pos'); and a path
    that cannot be written at all (read-only, no permission) into `WriteError`."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        from lossguided.disk import cannot_write, disk_full, is_disk_full

        if is_disk_full(e):
            raise disk_full(path, e) from None
        error = cannot_write(path, e) if isinstance(e, OSError) else None
        if error is not None:  # a read-only folder, no permission, a file where a folder should be
            raise error from None
        raise


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`; when the block succeeds they are renamed over `paths` in order.

    Every file is written before the first rename, so a full disk (or any error) while writing leaves all the old
    files in place: files that must stay in step (best.pt, last.pt, metrics.jsonl) never mix two epochs.
    """
    finals = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        with disk_errors(finals[0] if len(finals) == 1 else finals[0].parent):
            for final in finals:
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
                os.close(fd)
                tmps.append(Path(tmp))
            yield tmps
        umask = os.umask(0)
        os.umask(umask)
        for tmp, final in zip(tmps, finals, strict=True):
            with disk_errors(final):
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files owner-only; artifacts get ordinary permissions
                os.replace(tmp, final)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path` (same filesystem, so atomic)."""
    with atomic_paths(path) as (tmp,):
        yield tmp


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
    with disk_errors(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_npz(file: str | os.PathLike, /, **arrays: np.ndarray) -> None:
    with atomic_path(file) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


# -- CSV cells a spreadsheet will not run (OWASP "CSV injection") -------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def _needs_quote(text: str) -> bool:
    """Starts like a formula, or is a quote followed by something that does (so that `unsafe_cell` is exact)."""
    return text.startswith(_FORMULA_START) or (text.startswith("'") and _needs_quote(text[1:]))


def safe_cell(value: object) -> object:
    """A text cell that Excel/LibreOffice would run as a formula (`=cmd|' /C calc'!A0`) gets a leading `'`, as
    OWASP recommends; numbers and other cells are returned unchanged. `unsafe_cell` undoes it exactly."""
    if isinstance(value, str) and _needs_quote(value):
        return "'" + value
    return value


def unsafe_cell(text: str) -> str:
    """The inverse of `safe_cell` for a cell read back from a CSV we wrote (or a person edited)."""
    return text[1:] if text.startswith("'") and _needs_quote(text[1:]) else text
