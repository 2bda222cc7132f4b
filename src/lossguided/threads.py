"""How many threads torch's CPU kernels use. Why this module: torch starts one thread per physical core, and on
cores that other work keeps busy those threads wait on each other at every kernel's barrier. Measured on this
project's 2-core machine with one core busy: resnet10t at 32 px trained at 195 img/s with 2 threads and 470 img/s
with 1. The default counts the cores this process may use (its CPU affinity, shared among the ranks torchrun starts
on the machine) less the cores other processes keep busy now, and never goes below 1."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("lossguided")

_SAMPLES = 5  # readings of the run queue, 10 ms apart: the fewest is what stays busy, not a passing spike


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; all cores where the OS has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_elsewhere() -> int:
    """Cores other processes keep busy now: the runnable tasks in /proc/stat (the fewest of a few readings), less
    this one; 0 where the OS does not say."""
    readings = []
    for i in range(_SAMPLES):
        try:
            with open("/proc/stat") as f:
                running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        except (OSError, StopIteration, ValueError):
            return 0
        readings.append(running)
        if i + 1 < _SAMPLES:
            time.sleep(0.01)
    return max(0, min(readings) - 1)


def default_threads(busy: int | None = None) -> int:
    """Threads for this process: its share of the usable cores (per local rank), less those busy elsewhere."""
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = usable_cores()
    busy = busy_elsewhere() if busy is None else busy
    return max(1, min(cores // ranks, cores - busy))


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` when given (>= 1), else `default_threads()`; logs the choice and why.
    OMP_NUM_THREADS in the environment counts as given."""
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 or None (the default), got {threads!r}")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if threads is None and env.isdigit() and int(env) >= 1:
        threads, why = int(env), "OMP_NUM_THREADS"
    elif threads is None:
        busy = busy_elsewhere()
        threads = default_threads(busy)
        why = f"{usable_cores()} usable cores, {busy} busy with other work; --threads N to choose"
    else:
        why = "as asked"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.debug("torch threads: %d (%s)", threads, why)
    return threads
