"""The loss table keeps what the recorder saw (loss, prediction, probability of the given label, top-5) compactly, and
tables written before that format still load."""

import numpy as np
import pytest
import torch

from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.storage import Storage
from lossguided.engine.recorder import LossRecorder
from lossguided.losstable import LossTable


def _recorded(k: int = 7, n: int = 6):
    torch.manual_seed(0)
    logits, labels = torch.randn(n, k) * 3, torch.arange(n) % k
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    rec = LossRecorder(np.arange(n) * 10)
    rec.update(torch.arange(n) * 10, losses, logits)
    rec.end_epoch()
    return rec, logits, labels


def test_the_recorder_keeps_the_given_label_probability_and_the_top5():
    rec, logits, labels = _recorded()
    probs = logits.softmax(1)
    ids, loss, n, preds = rec.table()
    p_label, top_c, top_p = rec.probabilities()
    np.testing.assert_allclose(p_label, probs[torch.arange(6), labels].numpy(), rtol=1e-5)
    assert np.array_equal(top_c, probs.topk(5, dim=1).indices.numpy()) and np.array_equal(preds, top_c[:, 0])
    np.testing.assert_allclose(top_p, probs.topk(5, dim=1).values.numpy(), rtol=2e-3, atol=1e-4)
    with_labels = LossRecorder(ids)
    with_labels.update(torch.as_tensor(ids), torch.zeros(6), logits, labels)  # labels given: read from the logits
    with_labels.end_epoch()
    np.testing.assert_allclose(with_labels.probabilities()[0], p_label, rtol=1e-5)


def test_fewer_than_five_classes_are_padded(tmp_path):
    rec, _, _ = _recorded(k=3)
    top_c, top_p = rec.probabilities()[1:]
    assert (top_c[:, 3:] == -1).all() and (top_p[:, 3:] == 0).all() and np.allclose(top_p.sum(1), 1, atol=1e-2)
    m = Manifest(
        ids=rec.ids,
        labels=np.arange(6) % 3,
        classes=ClassMap(("a", "b", "c")),
        source="m",
        storage=Storage.files(["x"] * 6),
    )
    LossTable.from_recording(m, *rec.table(), *rec.probabilities()).save(tmp_path / "t.npz")
    assert np.array_equal(LossTable.load(tmp_path / "t.npz").top_classes, top_c)


def test_a_checkpointed_recorder_from_before_the_probabilities_loads():
    rec, _, _ = _recorded()
    old = {k: v for k, v in rec.state_dict().items() if k in ("ids", "sums", "counts", "preds")}
    fresh = LossRecorder(rec.ids)
    fresh.load_state_dict(old)
    assert np.array_equal(fresh.table()[1], rec.table()[1])
    fresh.load_pending({"ids": torch.tensor([10]), "losses": torch.tensor([1.0]), "preds": torch.tensor([2])}, "cpu")
    fresh.end_epoch()
    assert fresh.counts[1] == 2


def test_table_round_trip_and_old_format(tmp_path):
    rec, _, _ = _recorded()
    classes = ClassMap(tuple("abcdefg"))
    m = Manifest(
        ids=rec.ids,
        labels=np.arange(6) % 7,
        classes=classes,
        source="m.csv",
        storage=Storage.files([f"/data/x/{i}.jpg" for i in range(6)]),
    )
    table = LossTable.from_recording(m, *rec.table(), *rec.probabilities())
    table.save(tmp_path / "t.npz")
    back = LossTable.load(tmp_path / "t.npz")
    assert back.paths == table.paths and back.paths[2] == "/data/x/2.jpg" and back.classes == classes
    for name in ("ids", "labels", "losses", "n_records", "preds", "top_classes"):
        assert np.array_equal(getattr(back, name), getattr(table, name)), name
    np.testing.assert_allclose(back.p_label, table.p_label, rtol=1e-3)  # float16 on disk
    assert back.labels.dtype == np.int64 and back.top_probs.dtype == np.float16 and back.p_label.dtype == np.float32

    old = {
        "id": table.ids,
        "label": table.labels,
        "loss": table.losses,
        "n_records": table.n_records,
        "pred": table.preds,
        "path": np.array(table.paths.tolist(), dtype=str),
        "classes": np.array(classes.names),
    }
    np.savez(tmp_path / "old.npz", **old)  # the format before paths became a byte buffer
    legacy = LossTable.load(tmp_path / "old.npz")
    assert legacy.paths == table.paths and legacy.p_label is None and np.array_equal(legacy.losses, table.losses)

    (tmp_path / "cut.npz").write_bytes((tmp_path / "t.npz").read_bytes()[:200])
    with pytest.raises(DataError, match="cut.npz: not a readable loss table"):
        LossTable.load(tmp_path / "cut.npz")


def test_ids_and_predictions_are_stored_compactly_and_exactly(tmp_path):
    """Ids go to disk as the first id and the gaps, `pred` only where it is not the top-1 class: both come back
    exactly, also for large sparse ids and a prediction that differs from the top-1 (a tie broken otherwise)."""
    n, k = 1000, 12
    rng = np.random.default_rng(0)
    ids = np.cumsum(rng.integers(1, 2**40, n)) - 2**50  # ascending, negative and large gaps
    top = np.stack([rng.permutation(k)[:5] for _ in range(n)]).astype(np.int32)
    preds = top[:, 0].astype(np.int64)
    table = LossTable(
        ids,
        rng.integers(0, k, n),
        rng.random(n, dtype=np.float32),
        np.ones(n, dtype=np.int64),
        preds,
        [f"p/{i}.jpg" for i in range(n)],
        ClassMap(tuple("abcdefghijkl")),
        p_label=rng.random(n, dtype=np.float32),
        top_classes=top,
        top_probs=np.sort(rng.random((n, 5)), axis=1)[:, ::-1].astype(np.float16),
    )
    table.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        assert "pred" not in z.files and "id" not in z.files and z["id_gap"].dtype == np.uint64
    back = LossTable.load(tmp_path / "t.npz")
    assert np.array_equal(back.ids, ids) and np.array_equal(back.preds, preds)

    table.preds = preds.copy()
    table.preds[3] = top[3, 1]  # not the top-1: the column is stored whole
    table.save(tmp_path / "t2.npz")
    assert np.array_equal(LossTable.load(tmp_path / "t2.npz").preds, table.preds)
