"""SIGTERM as a request, not a kill: a cluster that preempts a job sends it, and the work since the last checkpoint
would be lost. `install()` (the CLI does it first) turns the signal into a flag; the trainer polls the flag at each
step boundary, writes last.pt there and raises `Preempted`, which the CLI ends with one line and exit code 143, so
a requeued rerun resumes at that step."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a job SIGTERM ended

_requested: list[int] = []


class Preempted(RuntimeError):
    """A stop was requested (SIGTERM); what was done so far is saved and a rerun resumes it."""


_at_fork: list[bool] = []


def install():
    """Make SIGTERM set the stop flag instead of ending the process (main thread only; a no-op elsewhere) and
    return the handler it replaced, for `restore` when the command ends: a process that goes on (a test, a
    notebook) must not keep it. A forked child (a DataLoader worker, a multiprocessing pool's process) gets the
    default back: a pool that ends its workers with SIGTERM must see them go."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGTERM, _on_signal)
    if not _at_fork:
        os.register_at_fork(after_in_child=_default_in_child)
        _at_fork.append(True)
    return previous


def restore(previous) -> None:
    """Put back the SIGTERM handler `install` replaced (None: it installed nothing)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def _default_in_child() -> None:
    with contextlib.suppress(ValueError):  # ours only: a caller's own handler stays theirs
        if signal.getsignal(signal.SIGTERM) is _on_signal:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


_polling: list[bool] = []  # non-empty while a trainer polls the flag at its step boundaries


def _on_signal(signum: int, frame) -> None:  # noqa: ARG001 - the signal module's signature
    _requested.append(signum)
    if not _polling:  # nothing saves at a step boundary: stop here, as Ctrl-C would
        raise Preempted("stopped by SIGTERM; rerun the same command to resume")


@contextlib.contextmanager
def polling():
    """While inside, SIGTERM only sets the flag: the caller polls `stop_requested()` and stops where it can save."""
    _polling.append(True)
    try:
        yield
    finally:
        _polling.pop()


def stop_requested() -> bool:
    return bool(_requested)


def clear() -> None:
    _requested.clear()
