"""all_gather_tensors with 2 gloo processes: tensors of any rank-dependent length along dim 0, any trailing shape."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lossguided.distributed import all_gather_tensors

pytestmark = [pytest.mark.dist, pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")]


def _worker(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = torch.arange((rank + 1) * 3, dtype=torch.int64).view(rank + 1, 3) + 100 * rank
        parts = all_gather_tensors(mine)
        flat = all_gather_tensors(torch.tensor([rank] * (2 - rank), dtype=torch.float16))
        out.put((rank, [p.tolist() for p in parts], [p.tolist() for p in flat]))
    finally:
        dist.destroy_process_group()


def test_gather_of_unequal_2d_parts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (parts, flat)) for r, parts, flat in (out.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(60)
    want = [[[0, 1, 2]], [[100, 101, 102], [103, 104, 105]]]
    assert results[0] == results[1] == (want, [[0.0, 0.0], [1.0]])
