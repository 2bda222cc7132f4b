"""Per-sample loss recording overhead: time of training epochs with the recorder on vs off, same process.

The recorder only appends the step's own per-sample losses (no second forward), so the cost should be noise.
Blocks alternate (off, on, off, on, ...) so that CPU frequency drift hits both sides; the median of the
per-pair ratios is reported. Last line: `overhead_pct=X` (goal: within 3%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lossguided.config import TrainConfig
from lossguided.data.datasets import make_dataset
from lossguided.data.manifest import ClassMap, Manifest
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
    m = Manifest(ids=np.arange(args.samples) * 7 + 3, labels=rng.integers(0, k, args.samples), classes=classes,
                 source="bench", images=rng.integers(0, 255, (args.samples, args.image_size, args.image_size),
                                                     dtype=np.uint8))  # fmt: skip
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
    times = {"off": [], "on": []}
    for _ in range(args.pairs):
        for mode in ("off", "on"):
            start = time.perf_counter()
            trainers[mode].train_epoch()
            times[mode].append(time.perf_counter() - start)
    ratios = [on / off for on, off in zip(times["on"], times["off"], strict=True)]
    steps = len(trainers["on"].loader)
    print(f"model={args.model} size={args.image_size} batch={args.batch_size} steps/epoch={steps}")
    print(f"epoch time off: {statistics.median(times['off']):.3f}s  on: {statistics.median(times['on']):.3f}s")
    print(f"per-pair ratios: {[round(r, 4) for r in ratios]}")
    print(f"overhead_pct={100 * (statistics.median(ratios) - 1):.2f}")


if __name__ == "__main__":
    main()
