"""A loader worker's memory stays flat over an epoch of index lookups (issue 12, item 3).

A worker is a forked copy of the main process. With paths in an object array, every `paths[i]` touches a `str`
object's reference count and copies its page into the worker; with one byte buffer (`StringColumn`) nothing is
written. The test forks the way a DataLoader worker is forked, looks up every sample, and measures the worker's
private memory (USS) growth.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from lossguided.data.loader import private_memory_mib
from lossguided.data.strings import StringColumn

N = 300_000


def _growth_in_a_forked_worker(paths, labels: np.ndarray, ids: np.ndarray) -> float:
    order = np.random.default_rng(0).permutation(len(labels))  # the sampler's order, made in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: one epoch of the lookups ImageFileDataset.__getitem__ does
        try:
            before = private_memory_mib()
            total = 0
            for j in range(len(order)):
                i = order[j]
                total += len(paths[i]) + int(labels[i]) + int(ids[i])
            os.write(write, f"{private_memory_mib() - before}".encode())
        finally:
            os._exit(0)
    os.close(write)
    out = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    return float(out)


@pytest.mark.skipif(not hasattr(os, "fork") or math.isnan(private_memory_mib()), reason="needs fork and /proc")
def test_a_worker_copies_no_paths_over_an_epoch():
    words = [f"/data/train/{i % 50030:05d}/{i:032x}.jpg" for i in range(N)]
    labels, ids = np.arange(N) % 50030, np.arange(N, dtype=np.int64)
    column = _growth_in_a_forked_worker(StringColumn.from_strings(words), labels, ids)
    objects = _growth_in_a_forked_worker(np.array(words, dtype=object), labels, ids)
    assert objects > 10, objects  # the measurement sees the object array's copy-on-write (~80 bytes a path)
    assert column < 3, column
