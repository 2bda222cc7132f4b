"""One owner per run folder: an exclusive `flock` on `FOLDER/.lock`, held while a command writes into the folder.

A second run on the same folder stops at once with one line naming the owner, instead of mixing its checkpoints,
metrics and config into the first one's. The kernel drops a `flock` when its process dies (also by SIGKILL or a
crash), so a lock file left behind is never stale in the sense of blocking: the next run takes it over, and its
non-empty content says the previous owner ended without releasing it. Locks are re-entrant inside one process
(`train` holds its folder, the trainer inside it asks again). `flock` works on local filesystems and NFSv4; on a
filesystem without it the folder is used unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from lossguided.config import ConfigError

log = logging.getLogger("lossguided")

LOCK_FILE = ".lock"
_HELD: dict[str, list[int]] = {}  # resolved folder -> [fd, depth], this process's locks


class RunFolderBusyError(ConfigError):
    """Another process holds the folder."""


def _owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 256).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def acquire(folder: str | os.PathLike) -> bool:
    """Take the lock of `folder` (created when missing); False when this process already held it (depth +1).

    Raises RunFolderBusyError at once when another process holds it.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return False
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(f"{folder}: cannot use as a run folder ({e.strerror or e}: {e.filename})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        owner = _owner(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderBusyError(
                f"{folder}: in use by another lossguided run ({owner or 'owner unknown'}); "
                "wait for it to finish or use another --out"
            ) from None
        log.warning("%s: cannot lock (%s); nothing stops a second run from writing into it", path, e.strerror)
        return False
    previous = _owner(fd)
    if previous:
        log.warning(
            "%s: the previous run (%s) ended without releasing it (killed?); taking the folder over", folder, previous
        )
    os.ftruncate(fd, 0)
    os.pwrite(
        fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0
    )
    _HELD[key] = [fd, 1]
    return True


def release(folder: str | os.PathLike) -> None:
    """Undo one `acquire`; the last one empties the lock file (a clean exit) and unlocks it."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    fd = _HELD.pop(key)[0]
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def hold(folder: str | os.PathLike, *, enabled: bool = True) -> Iterator[None]:
    """`with hold(out_dir):` the folder is this process's until the block ends (or the process dies).
    `enabled=False` (a rank that is not the main one) holds nothing."""
    if not enabled:
        yield
        return
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


def held(folder: str | os.PathLike) -> bool:
    """Whether this process holds the lock of `folder`."""
    return str(Path(folder).resolve()) in _HELD
