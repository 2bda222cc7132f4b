"""The prepared GPU check: one script that fits a 10-minute run on one GPU and measures what the defaults of a run
at AliProducts scale depend on. Run it first whenever a GPU is lent (`PYTHONPATH=src python3 benchmarks/gpu_check.py`),
then write its figures into the README's scale section.

Sections, each timed against `--budget-s` (a section that would start past it is skipped and says so):
1. environment: GPU, compute capability, native bf16, driver, torch and its CUDA build;
2. the trainer's `run_step` (batch transform, forward, per-sample losses, backward, Ranger step, per-batch lr) on
   device batches: img/s and peak GiB of ResNeSt-101e at 256 px with the 50,030-way head, batches 24/64/128 x
   NCHW/NHWC with cudnn.benchmark on; at batch 64 also cudnn.benchmark off, and torch.compile on (the faster layout);
3. the loss recorder's per-step cost (the same step with a `LossRecorder`);
4. last.pt (model + Ranger state) save and load seconds and size;
5. per-sample losses under bf16 autocast against fp32 (max and mean abs difference, rank correlation);
6. the input: the decode path against preprocessed JPEG shards through the training loader at 1/4/8 workers;
7. the ensemble scan (`ensemble_topk`) at 50,000 rows x 50,030 classes x 2,048 dims x 3 models, fast="auto" against
   the exact float32 path, extrapolated linearly to the 250,130 test rows.

Without CUDA it prints one line saying so and exits 0; `--allow-cpu --tiny` runs every section on CPU with small
sizes (a check of the script itself, as the tests do). The last line is `name=value` pairs of the key figures.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lossguided.config import TrainConfig
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.distributed import driver_version
from lossguided.engine import checkpoint
from lossguided.engine.recorder import LossRecorder
from lossguided.engine.trainer import Trainer
from lossguided.models import create_model

SUMMARY: dict[str, str] = {}


class Budget:
    """Seconds left of the run; a section that would start past the end is skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def section(name: str, budget: Budget, need_s: float, fn: Callable[[], None]) -> None:
    if budget.left() < need_s:
        print(f"[{name}] skipped: {budget.left():.0f} s left, it needs about {need_s:.0f}", flush=True)
        return
    start = time.monotonic()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - one failing section must not cost the others' figures
        print(f"[{name}] failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", flush=True)
        SUMMARY[f"{name}_failed"] = type(e).__name__
    finally:
        free()
    print(f"[{name}] {time.monotonic() - start:.1f} s", flush=True)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


# -- 1. environment ----------------------------------------------------------------------------------------------
def environment(device: torch.device) -> None:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        cc = f"{props.major}.{props.minor}"
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        print(
            f"gpu={props.name} cc={cc} memory_gib={props.total_memory / 2**30:.1f} sms={props.multi_processor_count} "
            f"bf16_native={bf16} driver={driver_version()} torch={torch.__version__} cuda_build={torch.version.cuda}"
        )
        SUMMARY.update({"gpu": props.name.replace(" ", "_"), "cc": cc, "bf16_native": str(bf16)})
    else:
        print(f"gpu=none (CPU check) torch={torch.__version__} threads={torch.get_num_threads()}")
        SUMMARY["gpu"] = "cpu"


# -- 2-4. the trainer -------------------------------------------------------------------------------------------
def make_trainer(args, device, *, batch: int, channels_last: bool, compile: bool = False, recorder: bool = False):
    k, s = args.classes, args.image_size
    classes = ClassMap(tuple(str(i) for i in range(k)))
    rng = np.random.default_rng(0)
    m = Manifest(
        ids=np.arange(batch),
        labels=rng.integers(0, k, batch),
        classes=classes,
        source="gpu_check",
        storage=Storage.arrays(rng.integers(0, 256, (batch, 8, 8, 3), dtype=np.uint8)),
    )
    cfg = TrainConfig(epochs=1000, batch_size=batch, lr=1e-4, channels_last=channels_last, compile=compile, flip=True)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=k)
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    rec = LossRecorder(np.arange(batch)) if recorder else None
    trainer = Trainer(
        model,
        make_dataset(m, image_size=s),
        cfg=cfg,
        classes=classes,
        out_dir=tmp,
        device=device,
        recorder=rec,
        run_config={"model": {"name": args.model}},
    )
    trainer.net.train()
    trainer.transform.train()
    return trainer


def device_batches(args, device, batch: int, n: int = 4):
    gen = torch.Generator(device=device).manual_seed(0)
    s, k = args.image_size, args.classes
    return [
        (
            torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, device=device, generator=gen),
            torch.randint(0, k, (batch,), device=device, generator=gen),
            torch.arange(batch, device=device),
        )
        for _ in range(n)
    ]


def time_steps(trainer, batches, device, *, warmup: int, steps: int) -> float:
    """img/s of `steps` timed run_steps after `warmup` untimed ones (cuDNN autotuning, allocator, compile)."""
    for i in range(warmup):
        loss = trainer.run_step(*batches[i % len(batches)])
    sync(device)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()} after warm-up")
    start = time.perf_counter()
    for i in range(steps):
        trainer.run_step(*batches[i % len(batches)])
    sync(device)
    return batches[0][0].shape[0] * steps / (time.perf_counter() - start)


def step_rates(args, device, budget: Budget) -> None:
    rates: dict[tuple, float] = {}
    for batch in args.batches:
        for layout in ("nchw", "nhwc"):
            if budget.left() < 30:
                print(f"step batch={batch} {layout}: skipped (budget)")
                continue
            free()
            trainer = make_trainer(args, device, batch=batch, channels_last=layout == "nhwc")
            try:
                rate = time_steps(
                    trainer, device_batches(args, device, batch), device, warmup=args.warmup, steps=args.steps
                )
            except torch.OutOfMemoryError:
                print(f"step batch={batch} {layout}: out of memory")
                del trainer
                continue
            rates[(batch, layout, "benchmark")] = rate
            print(f"step batch={batch} {layout} cudnn.benchmark=on img_s={rate:.1f} peak_gib={peak_gib(device):.1f}")
            SUMMARY[f"step_b{batch}_{layout}"] = f"{rate:.1f}"
            del trainer
    mid = args.batches[len(args.batches) // 2]
    best = max(("nchw", "nhwc"), key=lambda lay: rates.get((mid, lay, "benchmark"), 0.0))
    SUMMARY["best_layout"] = best
    for layout in ("nchw", "nhwc"):
        if budget.left() < 30:
            break
        free()
        trainer = make_trainer(args, device, batch=mid, channels_last=layout == "nhwc")
        torch.backends.cudnn.benchmark = False  # the trainer turned it on
        rate = time_steps(trainer, device_batches(args, device, mid), device, warmup=args.warmup, steps=args.steps)
        torch.backends.cudnn.benchmark = True
        on = rates.get((mid, layout, "benchmark"))
        ratio = f" (on/off {on / rate:.2f}x)" if on else ""
        print(f"step batch={mid} {layout} cudnn.benchmark=off img_s={rate:.1f}{ratio}")
        del trainer
    if not args.compile or budget.left() < 120:
        print(f"step compile: skipped ({'--no-compile' if not args.compile else 'budget'})")
        return
    free()
    trainer = make_trainer(args, device, batch=mid, channels_last=best == "nhwc", compile=True)
    start = time.perf_counter()
    rate = time_steps(trainer, device_batches(args, device, mid), device, warmup=args.warmup, steps=args.steps)
    base = rates.get((mid, best, "benchmark"))
    speedup = rate / base if base else float("nan")
    print(
        f"step batch={mid} {best} compile=on img_s={rate:.1f} speedup={speedup:.2f}x "
        f"(warm-up and timing {time.perf_counter() - start:.0f} s)"
    )
    SUMMARY["compile_speedup"] = f"{speedup:.2f}"
    del trainer


def recorder_cost(args, device) -> None:
    mid = args.batches[len(args.batches) // 2]
    rates = {}
    for rec in (False, True):
        free()
        trainer = make_trainer(args, device, batch=mid, channels_last=False, recorder=rec)
        rates[rec] = time_steps(
            trainer, device_batches(args, device, mid), device, warmup=args.warmup, steps=args.steps
        )
        del trainer
    overhead = rates[False] / rates[True] - 1
    print(f"recorder batch={mid}: {rates[False]:.1f} img/s without, {rates[True]:.1f} with ({overhead:+.1%} per step)")
    SUMMARY["recorder_overhead"] = f"{overhead:.3f}"


def checkpoint_io(args, device) -> None:
    trainer = make_trainer(args, device, batch=args.batches[0], channels_last=False)
    time_steps(trainer, device_batches(args, device, args.batches[0], n=1), device, warmup=1, steps=1)  # Ranger state
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        start = time.perf_counter()
        state = trainer.state_dict()
        checkpoint.save(path, state)
        save_s = time.perf_counter() - start
        size = path.stat().st_size / 2**30
        start = time.perf_counter()
        checkpoint.load(path, map_location=device)
        load_s = time.perf_counter() - start
    print(f"last.pt: {size:.2f} GiB, save {save_s:.1f} s (GPU->CPU copy included), load {load_s:.1f} s")
    SUMMARY.update({"ckpt_gib": f"{size:.2f}", "save_s": f"{save_s:.1f}", "load_s": f"{load_s:.1f}"})
    del trainer


def bf16_losses(args, device) -> None:
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.classes).to(device).eval()
    images, labels, _ = device_batches(args, device, args.batches[0], n=1)[0]
    x = (images.float() - 120.0) / 58.0
    with torch.no_grad():
        fp32 = torch.nn.functional.cross_entropy(model(x).float(), labels, reduction="none")
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            low = model(x)
        bf16 = torch.nn.functional.cross_entropy(low.float(), labels, reduction="none")
    diff = (fp32 - bf16).abs()
    ranks = lambda t: t.argsort().argsort().double()  # noqa: E731
    rho = torch.corrcoef(torch.stack([ranks(fp32), ranks(bf16)]))[0, 1].item()
    print(
        f"per-sample loss bf16 vs fp32 ({len(labels)} samples, untrained model, mean loss {fp32.mean():.3f}): "
        f"max abs diff {diff.max():.4f}, mean {diff.mean():.4f}, rank correlation {rho:.4f}"
    )
    SUMMARY.update({"bf16_loss_maxdiff": f"{diff.max():.4f}", "bf16_loss_rank_corr": f"{rho:.4f}"})


# -- 6. input -----------------------------------------------------------------------------------------------------
def input_rates(args, device) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from input_pipeline import make_photos

    from lossguided.data.loader import create_loader
    from lossguided.data.manifest import read_csv
    from lossguided.data.preprocessed import preprocess, read_preprocessed

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = read_csv(make_photos(root, args.photos, seed=0, min_side=args.min_side, max_side=args.max_side))
        size = args.image_size
        preprocess(manifest, root / "shards", image_size=size, storage="jpeg-shards", workers=8, progress=False)
        sets = {"decode": manifest, "jpeg-shards": read_preprocessed(root / "shards")}
        for workers in args.workers:
            for name, m in sets.items():
                loader = create_loader(
                    make_dataset(m, image_size=size), batch_size=32, shuffle=True, seed=0, workers=workers
                )
                start = time.perf_counter()
                seen = 0
                for images, _, _ in loader:
                    images.to(device, non_blocking=True)
                    seen += len(images)
                sync(device)
                rate = seen / (time.perf_counter() - start)
                print(f"input {name} workers={workers}: {rate:.0f} img/s ({rate / max(workers, 1):.0f} per worker)")
                SUMMARY[f"input_{name.replace('-', '_')}_w{workers}"] = f"{rate:.0f}"
                del loader


# -- 7. ensemble --------------------------------------------------------------------------------------------------
def ensemble_scan(args, device) -> None:
    from lossguided.ensemble import ensemble_topk

    n, k, d = args.ens_rows, args.ens_classes, args.ens_dim
    gen = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(3):
        feats = torch.randn(n, d, generator=gen).relu_().to(torch.float16).numpy()
        weight = (torch.randn(k, d, generator=gen) / math.sqrt(d)).numpy()
        bias = (0.1 * torch.randn(k, generator=gen)).numpy()
        sets.append((feats, weight, bias, 1))
    out = {}
    for fast in ("auto", False):
        start = time.perf_counter()
        idx, _ = ensemble_topk(sets, k=1, fast=fast, device=device)
        sync(device)
        out[fast] = (time.perf_counter() - start, idx)
    agree = (out["auto"][1] == out[False][1]).float().mean().item()
    scale = 250_130 / n
    print(
        f"ensemble {n:,} rows x {k:,} classes x {d} dims x 3 models: auto {out['auto'][0]:.1f} s, exact "
        f"{out[False][0]:.1f} s (top-1 agreement {agree:.4f}); at 250,130 rows about {out['auto'][0] * scale:.0f} s "
        f"and {out[False][0] * scale:.0f} s"
    )
    SUMMARY.update(
        {
            "ensemble_auto_s_250k": f"{out['auto'][0] * scale:.0f}",
            "ensemble_exact_s_250k": f"{out[False][0] * scale:.0f}",
        }
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no CUDA (script check only)")
    p.add_argument("--tiny", action="store_true", help="small sizes everywhere (with --allow-cpu: a quick check)")
    p.add_argument("--budget-s", type=float, default=540, help="stop starting sections after this many seconds")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile timing")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: skipped, no CUDA device (torch.cuda.is_available() is False)")
        return 0
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if args.tiny:
        sizes = dict(model="test_resnet", image_size=32, classes=10, batches=[4, 8], warmup=1, steps=2)
        sizes |= dict(photos=12, min_side=64, max_side=128, workers=[0, 1], ens_rows=256, ens_classes=100, ens_dim=16)
    else:
        sizes = dict(model="resnest101e", image_size=256, classes=50_030, batches=[24, 64, 128], warmup=10, steps=20)
        sizes |= dict(photos=1024, min_side=600, max_side=1600, workers=[1, 4, 8])
        sizes |= dict(ens_rows=50_000, ens_classes=50_030, ens_dim=2048)
    for key, value in sizes.items():
        setattr(args, key, value)
    budget = Budget(args.budget_s)
    environment(device)
    section("step", budget, 60, lambda: step_rates(args, device, budget))
    section("recorder", budget, 30, lambda: recorder_cost(args, device))
    section("checkpoint", budget, 30, lambda: checkpoint_io(args, device))
    section("bf16", budget, 10, lambda: bf16_losses(args, device))
    section("input", budget, 60, lambda: input_rates(args, device))
    section("ensemble", budget, 60, lambda: ensemble_scan(args, device))
    print(" ".join(f"{k}={v}" for k, v in SUMMARY.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
