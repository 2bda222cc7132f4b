"""`refine.logit_adjust`: after the last round the model's logits are shifted by -tau * log(class share of its
training list), folded into the classifier's bias; 'auto' picks tau on `data.choose` (here the built-in selection
split, held out of train and val)."""

import json

import numpy as np
import pytest
import torch

from lossguided import config, stages
from lossguided.data import fashion_mnist
from lossguided.data.sources import make_dataset
from lossguided.data.transforms import BatchTransform, saved_normalization
from lossguided.engine import checkpoint
from lossguided.engine.prior import TAUS, choose_tau, log_prior, predictions_by_tau
from lossguided.models import load_model
from lossguided.recipe import run_recipe

pytestmark = pytest.mark.fashion_mnist


def test_the_adjusted_model_predicts_the_adjusted_argmax_with_tau_chosen_on_the_choice_split(tmp_path):
    cfg = config.load(
        "cpu-small",
        [
            "data.image_size=16",
            "data.train_limit=400",
            "data.val_per_class=5",
            "data.select_per_class=10",
            "data.choose=fashion-mnist:select",
            "data.workers=0",
            "pretrain.epochs=1",
            "finetune.epochs=1",
            "refine.rounds=1",
            "refine.logit_adjust=auto",
        ],
    )
    out = tmp_path / "run"
    metrics = run_recipe(cfg, out_dir=out)
    row = metrics["stages"][-1]
    assert row["checkpoint"] == "adjust/best.pt" and row["tau"] in TAUS and row["chosen_on"] == "fashion-mnist:select"

    splits = stages.load_splits(cfg.data)
    ids = np.loadtxt(out / "refine1" / "selected.csv", delimiter=",", skiprows=1, usecols=0, dtype=np.int64)
    prior = log_prior(np.bincount(splits.train.labels[splits.train.positions_of(ids)], minlength=10))
    plain, state = load_model(checkpoint.load(out / "refine1" / "best.pt"))
    select = fashion_mnist.load("select", fashion_mnist.options_from(cfg.data))
    ds = make_dataset(select, image_size=16)
    y, preds = predictions_by_tau(plain, ds, prior, normalization=saved_normalization(state))
    assert choose_tau(y, preds, 10)[0] == row["tau"]  # the same choice, recomputed

    adjusted, adjusted_state = load_model(checkpoint.load(out / "adjust" / "best.pt"))
    mean, std = saved_normalization(adjusted_state)
    images, _, _ = ds.__getitems__(list(range(len(ds))))
    x = BatchTransform(mean=mean, std=std).eval()(images)
    with torch.no_grad():
        want = (plain(x) - row["tau"] * torch.tensor(prior, dtype=torch.float32)).argmax(1)
        got = adjusted(x).argmax(1)
    assert torch.equal(got, want)
    assert json.loads((out / "metrics.json").read_text())["stages"][-1]["name"].startswith("logit-adjusted")

    again = run_recipe(cfg, out_dir=out)  # a rerun reuses the stage
    assert again["stages"][-1] == row


def test_relabelled_samples_are_fine_tuned_under_their_new_class(tmp_path):
    cfg = config.load(
        "cpu-small",
        [
            "data.image_size=16",
            "data.train_limit=400",
            "data.val_per_class=5",
            "data.noise_rate=0.4",
            "data.workers=0",
            "pretrain.epochs=2",
            "finetune.epochs=1",
            "refine.rounds=1",
            "refine.drop_loss_above=hybrid",
            "refine.relabel_confident=true",
        ],
    )
    out = tmp_path / "run"
    (row,) = [s for s in run_recipe(cfg, out_dir=out)["stages"] if s["name"] == "refine1"]
    train = stages.load_splits(cfg.data).train
    rows = [r.split(",") for r in (out / "refine1" / "selected.csv").read_text().splitlines()[1:]]
    ids = np.array([int(r[0]) for r in rows])
    written = train.classes.index_of([r[2] for r in rows])
    changed = written != train.labels[train.positions_of(ids)]
    assert changed.sum() == row["relabelled"] and row["train_samples"] == len(rows)
    assert "relabel_precision" in row or row["relabelled"] == 0
