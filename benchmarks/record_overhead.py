"""Per-sample loss recording overhead: time of training epochs with the recorder on vs off, same process.

The recorder only appends the step's own per-sample losses (no second forward), so the cost should be noise.
Blocks alternate (off, on, off, on, ...) so that CPU frequency drift hits both sides; the median of the per-pair
ratios of wall and CPU time is reported, and, since those are noisy on a shared machine, the time spent inside the
recorder's own calls is measured directly as a share of the epoch. Last line:
`overhead_pct=<recorder share> paired_cpu_overhead_pct=<on/off - 1>` (goal: within 3%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lossguided.config import TrainConfig
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.engine.recorder import LossRecorder
from lossguided.engine.trainer import Trainer
from lossguided.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pairs", type=int, default=5, help="(off, on) epoch pairs")
    args = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    k = 100
    classes = ClassMap(tuple(str(i) for i in range(k)))
    m = Manifest(
        ids=np.arange(args.samples) * 7 + 3,
        labels=rng.integers(0, k, args.samples),
        classes=classes,
        source="bench",
        storage=Storage.arrays(rng.integers(0, 255, (args.samples, args.image_size, args.image_size), dtype=np.uint8)),
    )
    ds = make_dataset(m, image_size=args.image_size)
    cfg = TrainConfig(epochs=10_000, batch_size=args.batch_size, lr=1e-4)
    trainers = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=k)
        rec = LossRecorder(m.ids) if mode == "on" else None
        trainers[mode] = Trainer(model, ds, cfg=cfg, classes=classes, out_dir="/tmp/lossguided-bench", recorder=rec)
    for t in trainers.values():  # warm-up
        t.train_epoch()
    rec = trainers["on"].recorder
    inside = {"s": 0.0}
    for name in ("update", "end_epoch"):  # time spent inside the recorder itself, measured directly
        original = getattr(rec, name)

        def timed(*a, _f=original, **kw):
            t0 = time.process_time()
            out = _f(*a, **kw)
            inside["s"] += time.process_time() - t0
            return out

        setattr(rec, name, timed)
    wall, cpu = {"off": [], "on": []}, {"off": [], "on": []}
    for _ in range(args.pairs):
        for mode in ("off", "on"):
            w0, c0 = time.perf_counter(), time.process_time()
            trainers[mode].train_epoch()
            wall[mode].append(time.perf_counter() - w0)
            cpu[mode].append(time.process_time() - c0)
    wall_ratio = statistics.median(on / off for on, off in zip(wall["on"], wall["off"], strict=True))
    cpu_ratio = statistics.median(on / off for on, off in zip(cpu["on"], cpu["off"], strict=True))
    share = inside["s"] / sum(cpu["on"])
    steps = len(trainers["on"].loader)
    print(f"model={args.model} size={args.image_size} batch={args.batch_size} steps/epoch={steps} pairs={args.pairs}")
    print(
        f"median epoch wall off {statistics.median(wall['off']):.3f}s on {statistics.median(wall['on']):.3f}s; "
        f"cpu off {statistics.median(cpu['off']):.3f}s on {statistics.median(cpu['on']):.3f}s"
    )
    print(
        f"paired ratios: wall {wall_ratio:.4f}, cpu {cpu_ratio:.4f}; recorder's own share of the epoch cpu time "
        f"{100 * share:.3f}%"
    )
    # The recorder's own time is the overhead; the paired ratios bound it when the machine is quiet.
    print(f"overhead_pct={100 * share:.3f} paired_cpu_overhead_pct={100 * (cpu_ratio - 1):.2f}")


if __name__ == "__main__":
    main()
