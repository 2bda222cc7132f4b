"""`record.folds`: the first recording is out of fold. Each sample's loss comes from a model that never trained on
it, so a label the pre-trained model memorised cannot hide behind a low loss."""

import json

import numpy as np
import pytest

from lossguided import config, stages
from lossguided.engine import checkpoint
from lossguided.losstable import LossTable
from lossguided.recipe import run_recipe

pytestmark = pytest.mark.fashion_mnist


def test_folds_are_stratified_seeded_and_cover_every_sample():
    labels = np.repeat(np.arange(4), [1, 7, 50, 301])
    a = stages.fold_of(labels, 2, seed=3)
    assert np.array_equal(a, stages.fold_of(labels, 2, seed=3))
    assert not np.array_equal(a, stages.fold_of(labels, 2, seed=4))
    assert set(np.unique(a)) == {0, 1}
    for c in range(4):  # each class split as evenly as its size allows
        counts = np.bincount(a[labels == c], minlength=2)
        assert counts.max() - counts.min() <= 1, (c, counts)


def test_the_recipe_records_each_sample_with_a_model_that_never_trained_on_its_label(tmp_path):
    cfg = config.load(
        "cpu-small",
        [
            "data.image_size=16",
            "data.train_limit=300",
            "data.val_per_class=5",
            "data.workers=0",
            "pretrain.epochs=1",
            "finetune.epochs=1",
            "refine.rounds=2",
            "record.folds=2",
            "record.later_rounds_lr=0",
        ],
    )
    out = tmp_path / "run"
    run_recipe(cfg, out_dir=out)
    splits = stages.load_splits(cfg.data)
    train = splits.train
    table = LossTable.load(out / "record1" / "losses.npz")
    assert np.array_equal(table.ids, np.sort(train.ids)) and (table.n_records == 1).all()
    fold = stages.fold_of(train.labels, 2, cfg.pretrain.seed)
    for f in (0, 1):
        held = LossTable.load(out / "record1" / f"fold{f}" / "held_out_losses.npz")
        assert np.array_equal(held.ids, np.sort(train.ids[fold == f]))
        np.testing.assert_array_equal(table.losses[np.searchsorted(table.ids, held.ids)], held.losses)
        # the fold's model trained on the other fold only: its saved run key is that of the other fold's samples
        state = checkpoint.load(out / "record1" / f"fold{f}" / "model" / "last.pt")
        other = train.subset(np.flatnonzero(fold != f))
        assert (
            state["run_key"]["training data"]
            == stages.run_key(cfg, cfg.pretrain, other, init_from=None)["training data"]
        )
    assert json.loads((out / "record1" / "cross_fit.json").read_text())["fit_sizes"] == [
        int((fold != 0).sum()),
        int((fold != 1).sum()),
    ]
    assert json.loads((out / "record1" / "done.json").read_text())["folds"] == 2
    # round 2 scores the round-1 model as it is: no epoch on the noisy labels teaches it them again
    assert json.loads((out / "record2" / "done.json").read_text())["trained"] is False
    again = stages.record_losses(
        config.merge(cfg, {"record.lr": 0.0}),
        train,
        checkpoint_path=out / "refine1" / "best.pt",
        out_path=tmp_path / "again.npz",
    )
    np.testing.assert_allclose(LossTable.load(out / "record2" / "losses.npz").losses, again.losses, rtol=1e-5)
    # a rerun finds every stage done and changes nothing
    before = (out / "record1" / "losses.npz").read_bytes()
    run_recipe(cfg, out_dir=out)
    assert (out / "record1" / "losses.npz").read_bytes() == before
