"""One rank's slow work (rank 0 sleeps before a barrier, as when it builds an index or scores the ensemble)
outlasts a short collective timeout and kills the group, and runs through under the setting raised: the timeout
is `LOSSGUIDED_DIST_TIMEOUT_S` (default an hour, NCCL's own being 10 minutes). Two launches of 2 CPU processes."""

import os
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = [
    pytest.mark.dist,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="this torch build has no gloo backend"
    ),
]

SCRIPT = """
import sys, time, torch.distributed as dist
from pathlib import Path
from lossguided.distributed import init_distributed
info = init_distributed()
if info.rank == 0:
    time.sleep(4)
dist.barrier()
Path(sys.argv[1], f"rank{info.rank}.through").write_text("ok")  # files: the ranks' prints would interleave
dist.destroy_process_group()
"""


def _launch(tmp_path, timeout_s: str) -> subprocess.CompletedProcess:
    script = tmp_path / "slow_rank0.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSGUIDED_DIST_TIMEOUT_S": timeout_s}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        str(tmp_path),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_a_slow_rank_outlasts_a_short_timeout_but_not_the_setting(tmp_path):
    short = _launch(tmp_path, "1")
    assert short.returncode != 0 and "timed out" in short.stderr.lower()
    long = _launch(tmp_path, "60")
    assert long.returncode == 0, long.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.through")) == ["rank0.through", "rank1.through"]
