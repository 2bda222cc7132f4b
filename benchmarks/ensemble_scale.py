"""Time the streaming ensemble top-1 at AliProducts scale against plain float32 matmuls of the same work.

Generates seeded random float16 features ([N, D] per model, as stored on disk) and float32 heads ([K, D], [K]), then
measures in this process: the time of one loop of ``torch.mm(F_m, W_m.T)`` over the models (the reference work,
also giving the plain float32 reference top-1), the exact and the fast ``ensemble_topk`` each divided by it, the
share of the fast path's top-1 equal to the float32 reference, and each path's peak resident memory above what was
resident before it started (VmHWM after resetting it through /proc/self/clear_refs). For contrast it prints what the
naive all-logits approach would hold at full test-set scale. The last line printed is
``exact_ratio=X fast_ratio=Y top1_agreement=Z peak_extra_mib=W fast_scan=S``; targets: exact <= 1.05, fast <= 0.6,
Z = 1 (a fraction of rows) and W < 512. The fast run uses ``fast="auto"``, which takes the bf16 scan only where bf16
matmul is native and measured faster, and the fp32 scan elsewhere (S says which it took): on a CPU without bf16
(AVX2) the fast run is the exact one, and its ratio is the exact ratio.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossguided.ensemble import choose_scan, ensemble_topk, logit_memory_bytes

MIB = 1 << 20


def proc_status_kib(field: str) -> int:
    """A VmRSS/VmHWM value of this process in KiB (Linux), or -1 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """(result, wall seconds, CPU seconds, peak MiB resident above the RSS at the start) of one call."""
    gc.collect()
    ok = reset_peak()
    before = proc_status_kib("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = proc_status_kib("VmHWM") if ok else -1
    extra = (peak - before) / 1024 if peak >= 0 and before >= 0 else float("nan")
    return result, seconds, cpu, extra


def make_models(
    n_rows: int, n_classes: int, dim: int, n_models: int, *, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(features float16 [N, D], weight float32 [K, D], bias float32 [K], n_views=1) per model, seeded."""
    gen = torch.Generator().manual_seed(seed)
    models = []
    for _ in range(n_models):
        feats = torch.randn(n_rows, dim, generator=gen).relu_().to(torch.float16).numpy()  # post-ReLU pooled
        weight = (torch.randn(n_classes, dim, generator=gen) / math.sqrt(dim)).numpy()
        bias = (0.1 * torch.randn(n_classes, generator=gen)).numpy()
        models.append((feats, weight, bias, 1))
    return models


def reference(models: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]) -> tuple[float, float, torch.Tensor]:
    """Wall and CPU seconds of the timed loop of one full ``torch.mm(F_m, W_m.T)`` per model, and the float32
    ensemble top-1 (accumulated outside the timed region)."""
    xs = [torch.from_numpy(f).float() for f, _, _, _ in models]
    ws = [torch.from_numpy(w) for _, w, _, _ in models]
    out = torch.zeros(xs[0].shape[0], ws[0].shape[0])  # touched once here, so no page faults are timed
    acc = torch.zeros_like(out)
    seconds = cpu = 0.0
    for x, w, (_, _, b, n_views) in zip(xs, ws, models, strict=True):
        start, cpu_start = time.perf_counter(), time.process_time()
        torch.mm(x, w.t(), out=out)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        acc.add_(out, alpha=1.0 / n_views).add_(torch.from_numpy(b))
    return seconds, cpu, acc.argmax(dim=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="test rows N (default 10,000)")
    parser.add_argument("--classes", type=int, default=50_030, help="classes K (default 50,030)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension D of every model (default 2048)")
    parser.add_argument("--models", type=int, default=3, help="models in the ensemble (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=4096, help="rows per chunk (default 4096)")
    parser.add_argument("--tile-classes", type=int, default=4096, help="classes per tile (default 4096)")
    parser.add_argument("--full-rows", type=int, default=250_130, help="test-set size for the naive-memory contrast")
    args = parser.parse_args(argv)

    print(f"threads={torch.get_num_threads()} N={args.rows} K={args.classes} D={args.dim} models={args.models}")
    models = make_models(args.rows, args.classes, args.dim, args.models, seed=args.seed)
    flops = 2.0 * args.rows * args.dim * args.classes * args.models

    ref_seconds, ref_cpu, ref_top1 = reference(models)
    gc.collect()
    print(
        f"reference: {args.models} x torch.mm fp32 {ref_seconds:.2f} s ({flops / ref_seconds / 1e9:.0f} GFLOP/s), "
        f"{ref_cpu:.2f} CPU s"
    )
    opts = {"k": 1, "chunk_rows": args.chunk_rows, "tile_classes": args.tile_classes}
    choice = choose_scan("cpu")
    print(f"fast path: the {choice.name} scan ({choice.reason})")
    results = {}
    for name, fast in (("exact", False), ("fast", "auto")):
        (idx, _), seconds, cpu, mib = measured(lambda fast=fast: ensemble_topk(models, fast=fast, **opts))
        results[name] = idx, seconds, mib
        print(
            f"{name}: {seconds:.2f} s, ratio {seconds / ref_seconds:.3f} (CPU-time ratio {cpu / ref_cpu:.3f}, "
            f"less sensitive to other load), peak +{mib:.0f} MiB"
        )
    (exact_idx, exact_seconds, exact_mib), (fast_idx, fast_seconds, fast_mib) = results["exact"], results["fast"]

    fast_top1, exact_top1 = fast_idx[:, 0], exact_idx[:, 0]
    agreement = float((fast_top1 == ref_top1).double().mean())
    print(
        f"top-1 equal to the fp32 reference: fast {agreement:.4%}, exact "
        f"{float((exact_top1 == ref_top1).double().mean()):.4%}; fast == exact {bool(torch.equal(fast_idx, exact_idx))}"
    )
    naive = logit_memory_bytes(args.full_rows, args.classes)
    print(
        f"naive all-logits fp32 would hold {naive / 1e9:.1f} GB at N={args.full_rows} "
        f"({logit_memory_bytes(args.rows, args.classes) / MIB:.0f} MiB at N={args.rows}); "
        f"streamed peak +{max(exact_mib, fast_mib):.0f} MiB"
    )
    print(
        f"exact_ratio={exact_seconds / ref_seconds:.3f} fast_ratio={fast_seconds / ref_seconds:.3f} "
        f"top1_agreement={agreement:.4f} peak_extra_mib={max(exact_mib, fast_mib):.0f} fast_scan={choice.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
