"""Training that stops being finite ends with one line naming the epoch and step, saves nothing of that epoch, and
a checkpoint holding non-finite weights (a diverged run, a flipped bit) is refused on load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossguided.config import TrainConfig
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.engine import checkpoint
from lossguided.engine.trainer import NonFiniteError, Trainer
from lossguided.models import create_model

CLASSES = ClassMap(("a", "b"))


def trainer(out, **cfg) -> Trainer:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    m = Manifest(
        ids=np.arange(32),
        labels=np.arange(32) % 2,
        classes=CLASSES,
        source="mem",
        storage=Storage.arrays((rng.random((32, 16, 16)) * 255).astype(np.uint8)),
    )
    return Trainer(
        create_model("test_resnet", num_classes=2),
        make_dataset(m, image_size=16),
        classes=CLASSES,
        cfg=TrainConfig(epochs=2, batch_size=8, **cfg),
        out_dir=out,
        run_config={"model": {}},
    )


def nan_weight_at_start(tr: Trainer) -> None:
    with torch.no_grad():
        next(tr.model.parameters()).fill_(float("nan"))


def inf_loss_at_batch_3(tr: Trainer) -> None:
    calls, criterion = [0], tr.criterion

    def loss(logits, labels):
        calls[0] += 1
        out = criterion(logits, labels)
        return out * float("inf") if calls[0] == 3 else out

    tr.criterion = loss


def nan_buffer_in_epoch_2(tr: Trainer) -> None:
    """A BatchNorm running mean goes NaN: training mode never reads it, so only the weights check sees it."""
    epoch = tr.train_epoch

    def train_epoch():
        if tr.epoch == 1:
            bn = next(m for m in tr.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_mean.fill_(float("nan"))
        return epoch()

    tr.train_epoch = train_epoch


CASES = [  # (case, break the trainer, epoch, step, batch, what, files left from epoch 1)
    ("nan weight at start", nan_weight_at_start, 1, 1, 1, "the loss is not finite", False),
    ("inf loss in batch 3", inf_loss_at_batch_3, 1, 3, 3, "the loss is not finite", False),
    ("nan buffer in epoch 2", nan_buffer_in_epoch_2, 2, 8, 4, "the weights are not finite", True),
]


@pytest.mark.parametrize(("case", "breaks", "epoch", "step", "batch", "what", "kept"), CASES, ids=[c[0] for c in CASES])
def test_non_finite_training_stops_naming_epoch_and_step(tmp_path, case, breaks, epoch, step, batch, what, kept):
    tr = trainer(tmp_path)
    breaks(tr)
    with pytest.raises(NonFiniteError) as e:
        tr.fit()
    msg = str(e.value)
    assert f"epoch {epoch}, step {step} (batch {batch} of 4): {what}" in msg and "\n" not in msg, msg
    assert (tmp_path / "last.pt").exists() == kept
    if kept:  # epoch 1 stays whole and loadable; epoch 2 wrote nothing
        assert checkpoint.load(tmp_path / "last.pt")["epoch"] == 1
        assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_mid_epoch_checkpoint_is_not_written_from_nan_weights(tmp_path):
    tr = trainer(tmp_path, save_every_steps=2)
    inf_loss_at_batch_3(tr)
    with pytest.raises(NonFiniteError, match="step 3"):
        tr.fit()
    assert checkpoint.load(tmp_path / "last.pt")["mid_epoch"]["batches"] == 2  # the save before the bad batch


def _nan_bytes(path):
    data = bytearray(path.read_bytes())
    i = data.find(np.float32(1.5).tobytes())
    data[i : i + 4] = np.float32("nan").tobytes()
    path.write_bytes(bytes(data))


BAD_CHECKPOINTS = [
    ("nan weight", lambda p: torch.save({"model": {"w": torch.tensor([1.0, float("nan")])}, "classes": []}, p)),
    ("inf weight", lambda p: torch.save({"model": {"w": torch.full((3,), float("-inf"))}, "classes": []}, p)),
    ("flipped bits", lambda p: (torch.save({"model": {"w": torch.full((8,), 1.5)}, "classes": []}, p), _nan_bytes(p))),
    ("weights not a dict", lambda p: torch.save({"model": [1, 2], "classes": []}, p)),
    ("not a checkpoint", lambda p: p.write_bytes(b"PK\x03\x04 not a zip")),
]


@pytest.mark.parametrize(("case", "make"), BAD_CHECKPOINTS, ids=[c for c, _ in BAD_CHECKPOINTS])
def test_bad_checkpoint_is_refused_on_load(tmp_path, case, make):
    make(tmp_path / "best.pt")
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(tmp_path / "best.pt")
    assert str(e.value).startswith(str(tmp_path / "best.pt")) and "\n" not in str(e.value)
