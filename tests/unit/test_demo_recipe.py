"""`make demo` runs the shipped `demo` recipe: the whole method (pre-train, record, select with the automatic
per-class threshold, fine-tune) on a fraction of cpu-small's work, then the report; the full recipe stays
cpu-small."""

from __future__ import annotations

import re
from pathlib import Path

from lossguided import config as config_mod

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def training_images(cfg: config_mod.RecipeConfig, train: int, selected: float) -> float:
    """Images through a training step: pre-training, each round's recording and fine-tune on `selected` x train."""
    rounds = cfg.refine.rounds
    return train * (cfg.pretrain.epochs + rounds * (cfg.record.epochs + selected * cfg.finetune.epochs))


def test_demo_is_the_whole_recipe_at_a_fraction_of_cpu_small():
    demo, full = config_mod.load("demo"), config_mod.load("cpu-small")
    assert demo.refine.rounds >= 1 and demo.refine.drop_loss_above == full.refine.drop_loss_above == "hybrid"
    assert (demo.model, demo.data.image_size) == (full.model, full.data.image_size)
    assert demo.data.train_limit is not None and full.data.train_limit is None
    # cpu-small trains on 14,639 images (the long-tailed split) and fine-tunes on about half of them
    ratio = training_images(demo, demo.data.train_limit, 0.5) / training_images(full, 14_639, 0.5)
    assert ratio < 0.3


def test_make_demo_runs_the_demo_recipe_and_points_at_the_report():
    target = re.search(r"^demo:.*?(?=^\S)", MAKEFILE.read_text(), re.S | re.M)[0]
    assert "lossguided run demo --out runs/demo" in target and "report runs/demo" in target
    assert "report: runs/demo/report.html" in target and "run cpu-small" in target
