"""The training engine on a tiny timm model and tiny in-memory images: recording, resume, checkpoints."""

import numpy as np
import pytest
import torch

from lossguided.config import TrainConfig
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.engine import checkpoint
from lossguided.engine.recorder import LossRecorder
from lossguided.engine.trainer import Trainer
from lossguided.models import create_model

CLASSES = ClassMap(("a", "b", "c"))


def tiny_manifest(n=30, seed=0) -> Manifest:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = (rng.random((n, 16, 16)) * 60).astype(np.uint8) + (labels * 60)[:, None, None].astype(np.uint8)
    ids = rng.permutation(1000)[:n] + 5000  # ids that are neither positions nor contiguous
    return Manifest(ids=ids, labels=labels, classes=CLASSES, source="tiny", storage=Storage.arrays(images))


def make_trainer(tmp_path, manifest, *, epochs=2, recorder=None, seed=0, **kw) -> Trainer:
    torch.manual_seed(seed)
    model = create_model("test_resnet", num_classes=3)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, **kw)
    return Trainer(
        model,
        make_dataset(manifest, image_size=16),
        cfg=cfg,
        classes=CLASSES,
        out_dir=tmp_path,
        recorder=recorder,
        run_config={"model": {"name": "test_resnet"}},
    )


def test_recorded_losses_equal_a_separate_forward(tmp_path):
    m = tiny_manifest()
    rec = LossRecorder(m.ids)
    tr = make_trainer(tmp_path, m, recorder=rec)
    ds = make_dataset(m, image_size=16)
    images, labels, ids = ds.__getitems__(list(range(8)))
    reference = create_model("test_resnet", num_classes=3)
    reference.load_state_dict(tr.model.state_dict())  # the weights before the step
    reference.train()
    x = tr.transform.eval()(images)  # no flips in this config; same input
    expected = torch.nn.functional.cross_entropy(reference(x), labels, reduction="none")
    tr.net.train()
    tr.run_step(images, labels, ids)
    assert torch.equal(tr.recorder._ids[0], ids)
    torch.testing.assert_close(tr.recorder._losses[0], expected.detach(), rtol=1e-5, atol=1e-6)
    assert tr.step == 1  # and the step did update


def test_each_sample_recorded_once_per_epoch_and_averaged(tmp_path):
    m = tiny_manifest(n=27)  # not a multiple of the batch size
    rec = LossRecorder(m.ids)
    make_trainer(tmp_path, m, epochs=3, recorder=rec).fit()
    ids, losses, counts, preds = rec.table()
    assert np.array_equal(ids, np.sort(m.ids))
    assert np.all(counts == 3)
    assert np.all(np.isfinite(losses)) and np.all((preds >= 0) & (preds < 3))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    m = tiny_manifest()
    full = make_trainer(tmp_path / "full", m, epochs=3, recorder=LossRecorder(m.ids), flip=True)
    full.fit()

    killed = make_trainer(tmp_path / "killed", m, epochs=3, recorder=LossRecorder(m.ids), flip=True)
    original = killed.train_epoch
    calls = {"n": 0}

    def dies_in_epoch_2():
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original()

    killed.train_epoch = dies_in_epoch_2
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = make_trainer(tmp_path / "killed", m, epochs=3, recorder=LossRecorder(m.ids), flip=True, seed=123)
    result = resumed.fit()
    assert result.resumed_from == 1
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    np.testing.assert_array_equal(resumed.recorder.sums, full.recorder.sums)


def test_resume_inside_an_epoch_continues_exactly(tmp_path):
    """Killed before step 8 of 12 (30 samples, batch 8: 4 steps an epoch) with a checkpoint every 3 batches of an
    epoch: the rerun starts after step 7 (epoch 2, batch 3) and ends with the uninterrupted run's weights, losses
    and metrics."""
    m = tiny_manifest()
    kw = {"epochs": 3, "flip": True, "save_every_steps": 3}
    full = make_trainer(tmp_path / "full", m, recorder=LossRecorder(m.ids), **kw)
    full.fit()

    killed = make_trainer(tmp_path / "killed", m, recorder=LossRecorder(m.ids), **kw)
    original = killed.run_step

    def dies_at_step_8(*args):
        if killed.step == 7:
            raise KeyboardInterrupt
        return original(*args)

    killed.run_step = dies_at_step_8
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    saved = checkpoint.load(tmp_path / "killed" / "last.pt")
    assert saved["step"] == 7 and saved["epoch"] == 1 and saved["mid_epoch"]["batches"] == 3
    resumed = make_trainer(tmp_path / "killed", m, recorder=LossRecorder(m.ids), seed=123, **kw)
    assert resumed.fit().resumed_from == 1
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    np.testing.assert_array_equal(resumed.recorder.sums, full.recorder.sums)
    np.testing.assert_array_equal(resumed.recorder.counts, np.full(len(m), 3))
    timing = ("images_per_s", "epoch_time_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_checkpoint_loads_without_code_and_refuses_other_class_maps(tmp_path):
    m = tiny_manifest()
    make_trainer(tmp_path, m, epochs=1).fit()
    state = checkpoint.load(tmp_path / "last.pt")
    assert state["classes"] == ["a", "b", "c"] and state["epoch"] == 1
    with pytest.raises(
        checkpoint.CheckpointError, match=r"class map differs from the data \(first difference at class 1"
    ):
        checkpoint.check_same_classes(state, ClassMap(("a", "x", "c")), path="last.pt", source="the data")
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt: not a readable lossguided checkpoint"):
        checkpoint.load(tmp_path / "evil.pt")


def test_best_checkpoint_follows_validation(tmp_path):
    m = tiny_manifest()
    val = tiny_manifest(n=12, seed=1)
    tr = make_trainer(tmp_path, m, epochs=2)
    tr.val_set = make_dataset(val, image_size=16)
    result = tr.fit()
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["best_val_error"] == result.best_val_error
    assert "optimizer" not in best


def test_a_last_batch_of_one_sample_joins_the_batch_before(tmp_path):
    m = tiny_manifest(n=17)  # 8 + 8 + 1 with batch 8; the model's feature map is 1x1 at 16px, where BN needs >1
    rec = LossRecorder(m.ids)
    tr = make_trainer(tmp_path, m, epochs=1, recorder=rec)
    assert tr.steps_per_epoch == 2
    assert sorted(len(b) for b in tr.loader.batch_sampler) == [8, 9]
    tr.fit()
    assert np.all(rec.table()[2] == 1)  # every sample recorded once


def test_starting_over_rewrites_the_metrics_file(tmp_path):
    m = tiny_manifest()
    make_trainer(tmp_path, m, epochs=2).fit()
    make_trainer(tmp_path, m, epochs=1).fit(resume=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"epoch": 1' in lines[0]


@pytest.mark.parametrize("n", [1, 2, 7, 9, 16, 17])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batch_sampler_keeps_every_sample_once_and_its_length(n, batch_size):
    from lossguided.data.loader import NoSingletonBatchSampler

    batches = list(NoSingletonBatchSampler(range(n), batch_size))
    assert [i for b in batches for i in b] == list(range(n)) and len(batches) == len(
        NoSingletonBatchSampler(range(n), batch_size)
    )
    assert all(len(b) <= batch_size + 1 for b in batches)  # only a lone last sample joins the batch before
    assert batch_size == 1 or n == 1 or all(len(b) > 1 for b in batches)


def test_resume_with_persistent_workers_flips_like_an_uninterrupted_run(tmp_path, image_csv):
    """With persistent loader workers only the first epoch's iterator draws from the global generator; a resumed
    run (a new process, a new iterator) must not draw where the uninterrupted run did not."""
    from lossguided.data.manifest import read_csv

    m = read_csv(image_csv)
    classes = m.classes

    def trainer(out, seed=0):
        torch.manual_seed(seed)
        model = create_model("test_resnet", num_classes=len(classes))
        cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, flip=True)
        return Trainer(
            model,
            make_dataset(m, image_size=16),
            cfg=cfg,
            classes=classes,
            out_dir=out,
            loader_kwargs={"workers": 1, "persistent_workers": True},
        )

    full = trainer(tmp_path / "full")
    full.fit()
    cut = trainer(tmp_path / "cut")
    original, calls = cut.train_epoch, []

    def dies_in_epoch_2():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original()

    cut.train_epoch = dies_in_epoch_2
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    resumed = trainer(tmp_path / "cut", seed=123)
    assert resumed.fit().resumed_from == 1
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("saved_world, new_world", [(2, 1), (1, 2)])
def test_resume_with_another_world_size_keeps_the_schedule(tmp_path, saved_world, new_world):
    """A last.pt written by a run whose epoch had `saved_world`/`new_world` times the steps of this one (another
    world size: each rank sees 1/world of the data) resumes at the same share of the cosine schedule, so the lr
    equals that of an uninterrupted run after the same number of images."""
    m = tiny_manifest(n=32)
    first = make_trainer(tmp_path / "a", m, epochs=3, warmup_steps=0)
    first.epoch = 0
    first.history = []
    record = {"epoch": 1, **first.train_epoch()}
    first.epoch = 1
    first._save_epoch(record, True)
    state = checkpoint.load(tmp_path / "a" / "last.pt")
    spe = first.steps_per_epoch  # 4 steps an epoch here (32 images, batch 8)
    saved_spe = spe * new_world // saved_world  # the other world: each rank saw 1/world of the data
    state["steps_per_epoch"] = saved_spe
    state["step"] = saved_spe  # one epoch of the other world's steps
    (tmp_path / "b").mkdir()
    checkpoint.save(tmp_path / "b" / "last.pt", state)
    resumed = make_trainer(tmp_path / "b", m, epochs=3, warmup_steps=0)
    resumed._resume()
    uninterrupted = make_trainer(tmp_path / "c", m, epochs=3, warmup_steps=0)
    uninterrupted.scheduler.step_update(spe)  # after one epoch of this world's steps
    assert resumed.step == spe
    lr = resumed.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(uninterrupted.optimizer.param_groups[0]["lr"], rel=1e-9)
    assert lr > first.cfg.lr * first.cfg.lr_min_ratio * 1.5  # not stuck at the minimum


def test_summary_csv_has_a_row_per_epoch_like_timms(tmp_path):
    m = tiny_manifest()
    tr = make_trainer(tmp_path, m, epochs=2)
    tr.val_set = make_dataset(m, image_size=16)
    tr.fit()
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_mean_top1_error,val_top1_error,lr,images_per_s"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"] and all(len(r.split(",")) == 6 for r in rows)


def test_tensorboard_scalars_when_it_is_installed(tmp_path):
    pytest.importorskip("tensorboard")
    m = tiny_manifest()
    make_trainer(tmp_path, m, epochs=1).fit()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_ema_weights_are_validated_shipped_and_resumed(tmp_path):
    m = tiny_manifest()
    tr = make_trainer(tmp_path, m, epochs=2, ema_decay=0.9)
    tr.val_set = make_dataset(m, image_size=16)
    tr.fit()
    last, best = checkpoint.load(tmp_path / "last.pt"), checkpoint.load(tmp_path / "best.pt")
    assert "ema" in last and "ema" not in best
    ema = tr.ema.module.state_dict()
    assert any(not torch.equal(ema[k], last["model"][k]) for k in ema if ema[k].is_floating_point())  # an average
    if best["epoch"] == 2:
        assert all(torch.equal(best["model"][k], ema[k]) for k in ema)  # the shipped weights are the EMA's
    again = make_trainer(tmp_path, m, epochs=3, ema_decay=0.9)
    again._resume()
    assert all(torch.equal(again.ema.module.state_dict()[k], ema[k]) for k in ema)


def test_mixup_mixes_training_batches_but_never_a_recording(tmp_path):
    m = tiny_manifest(n=32)
    tr = make_trainer(tmp_path / "a", m, epochs=1, mixup=0.4, cutmix=1.0)
    assert tr.mixup is not None
    images, labels, ids = make_dataset(m, image_size=16).__getitems__(list(range(8)))
    tr.net.train()
    loss = tr.run_step(images, labels, ids)
    assert torch.isfinite(loss) and tr.step == 1
    rec = make_trainer(tmp_path / "b", m, epochs=1, mixup=0.4, recorder=LossRecorder(m.ids))
    assert rec.mixup is None  # recorded losses must be each image's own
