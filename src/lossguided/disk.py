"""A full disk as one line: the error type every writer raises for ENOSPC/EFBIG/EDQUOT, and the free-space check
run before large writes whose size is known (checkpoints, memmaps, feature stores), so a run stops before it starts
a file it cannot finish. `io` imports this lazily: it derives from `DataError`, which lives under `data/`."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from lossguided.data.errors import DataError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})  # EFBIG: a file size limit (RLIMIT_FSIZE)
MARGIN = 16 * 2**20  # left free beyond a write's own size: metadata, the temporary beside the old file, logs


class DiskFullError(DataError):
    """No room to write: names the file or folder, and the free and needed bytes where they are known."""


class WriteError(DataError):
    """A file or folder that cannot be written at all (read-only, no permission, a path through a file)."""


def cannot_write(path: str | os.PathLike, e: OSError) -> WriteError | None:
    """The one-line error for an OSError raised on `path` itself, its temporary or a folder above it (creating
    them); None for an error about some other file, which is not ours to explain."""
    if e.filename is None:
        return None
    target, failed = Path(path).absolute(), Path(os.fsdecode(e.filename)).absolute()
    if failed.parent != target.parent and failed not in target.parents:
        return None
    return WriteError(f"cannot write {path}: {e.strerror or e} ({failed})")


def is_disk_full(e: BaseException | None) -> bool:
    """True for an OSError of a full disk, also when it is the cause or context of another error (torch.save
    raises RuntimeError 'unexpected pos' with the OSError as its context)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes for an unprivileged writer on the filesystem of `path` (or of its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def disk_full(path: str | os.PathLike, e: BaseException | None = None, *, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that found no room."""
    try:
        free = free_bytes(path)
    except OSError:
        free = None
    parts = [f"{_size(free)} free" if free is not None else None, f"{_size(needed)} needed" if needed else None]
    why = ", ".join(p for p in parts if p)
    cause = None
    while e is not None and not (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS):
        e = e.__cause__ or e.__context__
    if e is not None:
        cause = os.strerror(e.errno)
    detail = "; ".join(x for x in (why, cause) if x)
    return DiskFullError(
        f"no space left on {path}: {detail or 'write failed'}; free some space and rerun the same "
        "command (finished files are kept)"
    )


def ensure_free(path: str | os.PathLike, needed: int) -> None:
    """Raise DiskFullError unless the filesystem of `path` has `needed` bytes and a margin free."""
    try:
        free = free_bytes(path)
    except OSError:
        return  # cannot tell: the write itself will say
    if free < needed + MARGIN:
        raise disk_full(path, needed=needed + MARGIN)


def preallocate(fd: int, size: int, *, path: str | os.PathLike) -> None:
    """Reserve `size` bytes for an open file before it is written through a memory map: a write into a sparse
    mapping on a full disk kills the process with SIGBUS; reserving first turns that into a one-line error."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise disk_full(path, e, needed=size) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        ensure_free(path, size)  # a filesystem without fallocate: check the space instead
