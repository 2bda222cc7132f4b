"""Files a user hands over that are not what they claim: one line naming the file, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from lossguided import config, stages
from lossguided.data.manifest import ClassMap, DataError
from lossguided.losstable import LossTable


@pytest.mark.parametrize(
    ("name", "content"),
    [("w.safetensors", b"garbage"), ("w.pth", b"PK\x03\x04garbage"), ("w.bin", b"\x80\x04K\x01.")],
)
def test_a_crafted_weights_file_is_one_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    cfg = config.load(None, {"model.name": "resnet10t", "model.pretrained": False, "model.pretrained_path": str(path)})
    with pytest.raises(config.ConfigError, match=f"{name}: not usable as 'resnet10t' weights") as e:
        stages.build_model(cfg, ClassMap(("a", "b")))
    assert "\n" not in str(e.value)


def test_a_truncated_loss_table_is_one_line(tmp_path):
    n = 50
    table = LossTable(
        ids=np.arange(n),
        labels=np.arange(n) % 2,
        losses=np.linspace(0, 3, n).astype(np.float32),
        n_records=np.ones(n, np.int32),
        preds=np.zeros(n, np.int64),
        classes=ClassMap(("a", "b")),
        paths=np.array([f"/img/{i}.png" for i in range(n)], dtype=object),
    )
    table.save(tmp_path / "losses.npz")
    data = (tmp_path / "losses.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.npz") as e:
        LossTable.load(tmp_path / "cut.npz")
    assert "\n" not in str(e.value)


def test_an_error_from_a_loader_worker_reaches_the_user_as_its_own_line():
    from lossguided.data.manifest import one_line_message

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nlossguided.data.manifest.DataError: store: shard 3 is cut short (id 17)'
    )
    assert one_line_message(wrapped) == "store: shard 3 is cut short (id 17)"
    assert one_line_message(DataError("plain")) == "plain"
