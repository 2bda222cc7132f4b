"""A fake finished run folder, made directly (no training): image files, a loss table in which the injected wrong
labels have the highest losses, the selection, metrics and done.json files, as `lossguided run` leaves them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable
from lossguided.refine.apply import select_from_table, selection_stats, write_selection

# awkward names on purpose: markup, quotes and non-ASCII must show as text, never be parsed as HTML
CLASS_NAMES = ["Bag", "Coat <b>bold</b> & co", "Dress", 'Sandal "open"', "Shirt", "Sneaker", "Trouser", "Zoë"]


def make_fake_run(root: Path, *, n_classes: int = 8, per_class: int = 10, seed: int = 0) -> dict:
    """A run folder under `root/run` and its images under `root/img`; returns what was planted."""
    rng = np.random.default_rng(seed)
    names = (CLASS_NAMES + [f"class-{i:05d}" for i in range(n_classes - len(CLASS_NAMES))])[:n_classes]
    classes = ClassMap(tuple(sorted(names)))
    k = len(classes)
    img_dir = root / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    n = k * per_class
    true = np.repeat(np.arange(k), per_class)
    labels = true.copy()
    noisy = rng.permutation(n)[: n // 5]  # 20% wrong labels, each moved to the next class
    labels[noisy] = (true[noisy] + 1) % k
    losses = rng.uniform(0.05, 1.0, n).astype(np.float32)
    losses[noisy] = rng.uniform(3.0, 6.0, len(noisy))
    worst = int(noisy[np.argmax(losses[noisy])])
    preds = np.where(rng.random(n) < 0.8, true, rng.integers(0, k, n))
    paths = []
    for i in range(n):
        arr = np.full((12 + i % 7, 16, 3), 40, np.uint8)
        arr[..., true[i] % 3] = 60 + 20 * (true[i] % 8)
        arr[2:-2, 3:-3] = rng.integers(0, 255, 3)
        p = img_dir / f"{i:04d}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    ids = np.arange(100, 100 + n)
    table = LossTable(ids, labels, losses, np.ones(n, np.int64), preds, np.array(paths, dtype=object), classes, true)

    run = root / "run"
    for stage in ("pretrain", "record1", "refine1"):
        (run / stage).mkdir(parents=True, exist_ok=True)
    config = {
        "data": {"train": str(root / "train.csv")},
        "refine": {"rounds": 1, "bands": ["1-3"], "drop_loss_above": None, "drop_quantile": 0.1},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    table.save(run / "record1" / "losses.npz")
    selected = select_from_table(table, bands=["1-3"], drop_loss_above=None, drop_quantile=0.1, per_class=None)
    write_selection(table, selected, run / "refine1" / "selected.csv")

    def curve(e0):
        return [{"epoch": e, "train_loss": 2.0 / e + e0, "val_mean_top1_error": 0.5 / e + e0} for e in (1, 2, 3)]

    rows = [
        {"name": "pretrain", "train_samples": n, "val_mean_top1_error": 0.4, "test_mean_top1_error": 0.41},
        {
            "name": "refine1",
            "train_samples": len(selected),
            **selection_stats(table, selected),
            "val_mean_top1_error": 0.3,
            "test_mean_top1_error": 0.31,
        },
    ]
    for stage, row in (("pretrain", rows[0]), ("record1", {"losses": "x"}), ("refine1", rows[1])):
        (run / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve(0.1)))
        (run / stage / "done.json").write_text(json.dumps(row))
    (run / "metrics.json").write_text(json.dumps({"stages": rows}))
    return {"run": run, "table": table, "selected": selected, "worst_id": int(ids[worst]), "noisy_pos": noisy}
