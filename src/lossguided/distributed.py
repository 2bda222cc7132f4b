"""The one place that reads distributed state. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them the process
is a world of one and every helper here is a no-op, so single-process code paths need no special cases."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files (checkpoints, tables, logs)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


TIMEOUT_ENV = "LOSSGUIDED_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600  # NCCL's own is 10 minutes: less than one rank's share of some one-rank work at scale
ALLOW_CPU_ENV = "LOSSGUIDED_ALLOW_CPU"


class DeviceError(RuntimeError):
    """The machine has a GPU that this torch build cannot use: training on its CPU instead would be silent."""


def collective_timeout() -> timedelta:
    """How long a collective may wait for the slowest rank: LOSSGUIDED_DIST_TIMEOUT_S seconds, default an hour."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise DeviceError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU), with `collective_timeout`."""
    check_cuda_usable()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=collective_timeout())
    return info


@lru_cache(maxsize=1)
def visible_gpus() -> tuple[str, ...]:
    """The GPUs `nvidia-smi -L` lists (empty where it is missing, fails or lists none)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.startswith("GPU "))


def driver_version() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "unknown"
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.strip().splitlines() or ["unknown"])[0]


def check_cuda_usable() -> None:
    """DeviceError (one line: the GPU, the driver, this build's CUDA) when nvidia-smi sees a GPU that torch cannot
    use, so a GPU machine never trains on its CPU without a word; LOSSGUIDED_ALLOW_CPU=1 accepts the CPU."""
    if os.environ.get(ALLOW_CPU_ENV) == "1" or torch.cuda.is_available():
        return
    gpus = visible_gpus()
    if not gpus:
        return
    build = torch.version.cuda or "none (a CPU-only build)"
    raise DeviceError(
        f"nvidia-smi sees {gpus[0].split(' (UUID')[0]} (driver {driver_version()}), but this torch "
        f"{torch.__version__} (CUDA {build}) cannot use it: install a torch build for this driver, or set "
        f"{ALLOW_CPU_ENV}=1 to run on the CPU"
    )


def get_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def default_device(info: DistInfo | None = None) -> torch.device:
    info = info or get_info()
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Gather a tensor from every rank along dim 0, whose length may differ across ranks (the other dims must
    agree): [N_r, ...] per rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [t]
    n = torch.tensor([t.shape[0] if t.ndim else 1], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    t = t.reshape(-1) if t.ndim == 0 else t.contiguous()
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [o[: int(s.item())] for o, s in zip(out, sizes, strict=True)]


def broadcast_object(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] in a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (in place; returned for chaining)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum of `t` over ranks (in place; returned for chaining)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to every rank. DDP broadcasts them before each
    forward, but every rank then updates its own copy from its last batch: after an epoch they differ, and the
    model each rank evaluates would not be the one rank 0 saves."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=src)


def shutdown() -> None:
    """Leave the process group (avoids PyTorch's warning at exit and lets the launcher finish cleanly)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
