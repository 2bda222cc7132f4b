"""GPU smoke test and throughput: training images/s of the paper's setting on one CUDA device.

ResNeSt-101e at 256x256, batch 64, bf16 autocast and the architecture's memory format (NCHW for ResNeSt), through
the real `Trainer.run_step` (batch transform, forward, per-sample losses, backward, Ranger step, per-batch LR) on
random uint8 images already on the device, so the number is the model's step rate without any input pipeline. The
head has the AliProducts class count (50,030) by default: ~100M of its parameters, a real share of the step's cost.

Without CUDA it prints why and exits 0 (`--allow-cpu` runs the same code on CPU, for checking the script with a small
model, e.g. `--allow-cpu --model test_resnet --image-size 32 --batch-size 8 --classes 10 --steps 3 --warmup 1`).
Last line: `images_per_s=X`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from lossguided.config import TrainConfig
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.engine.trainer import Trainer
from lossguided.models import create_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnest101e")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=50_030, help="classifier width (AliProducts: 50,030)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (cuDNN autotuning, allocator)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no CUDA (script check only)")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_smoke: skipped, no CUDA device (torch.cuda.is_available() is False)")
        return 0

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(0)
    b, s, k = args.batch_size, args.image_size, args.classes
    classes = ClassMap(tuple(str(i) for i in range(k)))
    # the Trainer builds its loader from a dataset; the timed steps get device batches directly
    rng = np.random.default_rng(0)
    m = Manifest(
        ids=np.arange(b),
        labels=rng.integers(0, k, b),
        classes=classes,
        source="gpu_smoke",
        storage=Storage.arrays(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)),
    )
    cfg = TrainConfig(epochs=args.warmup + args.steps, batch_size=b, lr=1e-4, amp=not args.no_amp, flip=True)
    model = create_model(args.model, num_classes=k)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model,
            make_dataset(m, image_size=s),
            cfg=cfg,
            classes=classes,
            out_dir=out,
            device=device,
            run_config={"model": {"name": args.model}},
        )
        trainer.net.train()
        trainer.transform.train()
        gen = torch.Generator(device=device).manual_seed(0)
        batches = [
            (
                torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, device=device, generator=gen),
                torch.randint(0, k, (b,), device=device, generator=gen),
                torch.arange(b, device=device),
            )
            for _ in range(4)
        ]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for i in range(args.warmup):
            loss = trainer.run_step(*batches[i % len(batches)])
        sync()
        if not torch.isfinite(loss):
            print(f"gpu_smoke: non-finite loss {loss.item()} after warm-up", file=sys.stderr)
            return 1
        start = time.perf_counter()
        for i in range(args.steps):
            loss = trainer.run_step(*batches[i % len(batches)])
        sync()
        elapsed = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    amp = "bf16" if cfg.amp and device.type == "cuda" else "fp32"
    print(
        f"device={name} model={args.model} size={s} batch={b} classes={k} amp={amp} "
        f"channels_last={trainer.channels_last} steps={args.steps} step_ms={1000 * elapsed / args.steps:.1f} "
        f"peak_gib={peak:.1f} "
        f"loss={loss.item():.4f}"
    )
    print(f"images_per_s={b * args.steps / elapsed:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
