"""One owner per run folder: an exclusive `flock` on `FOLDER/.lock`, held while a command writes into the folder.

A second run on the same folder stops at once with one line naming the owner, instead of mixing its checkpoints,
metrics and config into the first one's. The kernel drops a `flock` when its process dies (also by SIGKILL or a
crash), so a lock file left behind is never stale in the sense of blocking: the next run takes it over, and its
non-empty content says the previous owner ended without releasing it. Locks are re-entrant inside one process
(`train` holds its folder, the trainer inside it asks again). `flock` works on local filesystems and NFSv4; on a
filesystem without it the folder is used unlocked, with a warning. A lock that outlives its owner (NFS, a node that
crashed) is taken over: when its recorded pid is not running on this host, or when its owner, on another host, has
not touched it (a heartbeat every minute) for ten minutes.
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
            gone = _owner_gone(owner, path)
            if gone:  # a lock that outlived its owner (NFS, a crashed node): move it aside and take a new one
                log.warning("%s: the lock of %s is stale (%s); taking the folder over", folder, owner, gone)
                with contextlib.suppress(OSError):
                    os.replace(path, folder / f"{LOCK_FILE}.stale-{os.getpid()}")
                return acquire(folder)
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
    _start_heartbeat()
    return True


STALE_S = 600  # a lock whose owner has not touched it for this long is taken to be gone (the owner beats every 60 s)
BEAT_S = 60


def _owner_gone(owner: str, path: Path) -> str | None:
    """Why the recorded owner of a held lock is gone, or None while it may be alive: its pid is not running on this
    host, or (on another host) its heartbeat stopped STALE_S ago."""
    parts = owner.split()
    if len(parts) < 4 or parts[0] != "pid" or not parts[1].isdigit() or parts[2] != "on":
        return None
    pid, host = int(parts[1]), parts[3]
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid} is not running on this host"
        except PermissionError:
            return None
        return None
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    return f"no heartbeat from {host} for {age:.0f} s" if age > STALE_S else None


_beat: dict = {}  # the heartbeat thread and the event that stops it, while any lock is held


def _start_heartbeat() -> None:
    """Touch every held lock file each BEAT_S seconds (one daemon thread), so another host can tell a live owner
    from a crashed one. The thread lives only while a lock is held (`_stop_heartbeat` at the last release), so a
    process that forks afterwards (a multiprocessing pool) forks without it."""
    if _beat:
        return
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT_S):
            for fd, _ in list(_HELD.values()):
                with contextlib.suppress(OSError):
                    os.utime(fd)

    thread = threading.Thread(target=beat, name="lossguided-lock-heartbeat", daemon=True)
    _beat.update(thread=thread, stop=stop)
    thread.start()


def _stop_heartbeat() -> None:
    if _beat:
        _beat["stop"].set()
        _beat["thread"].join()
        _beat.clear()


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
    if not _HELD:
        _stop_heartbeat()


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
