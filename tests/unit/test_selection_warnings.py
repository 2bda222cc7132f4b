"""One line for each kind of silent damage a selection can do, and --strict turns them into errors."""

import numpy as np
import pytest

from lossguided.cli import main
from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable
from lossguided.refine.warnings import selection_warnings


def _table(n_per_class=(100, 40)):
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    n = len(labels)
    return LossTable(
        ids=np.arange(n),
        labels=labels,
        losses=np.linspace(0.01, 2.0, n).astype(np.float32),
        n_records=np.ones(n, np.int32),
        preds=labels.copy(),
        paths=[f"/img/{i}.png" for i in range(n)],
        classes=ClassMap(("head", "tail")),
    )


def test_a_healthy_selection_has_no_warning():
    table = _table()
    assert selection_warnings(table, table.ids[::1], {"estimated_noise_rate": 0.1}, val_error=0.2) == []


def test_each_kind_of_damage_is_one_line():
    table = _table()
    keep_few = np.r_[np.arange(10), 100 + np.arange(5)]  # 15 of 140; the tail keeps 5 of 40
    lines = selection_warnings(table, keep_few)
    assert any("keeps 11% of the data (15 of 140" in w for w in lines)
    assert any("2 of 2 classes lose over half their images (worst: 'head' keeps 10 of 100)" in w for w in lines)
    half = np.r_[np.arange(100), 100 + np.arange(30)]
    assert selection_warnings(table, half) == []
    disagree = selection_warnings(
        table, half, {"estimated_noise_rate": 0.45}, confident_other=np.arange(140) < 14
    )  # 45% against 10%
    assert len(disagree) == 1 and "estimates 45% wrong labels, confident learning 10%" in disagree[0]
    weak = selection_warnings(table, half, val_error=0.74)
    assert len(weak) == 1 and "val error of 0.74: too weak to tell wrong labels from hard ones" in weak[0]
    assert all("\n" not in w for w in lines + disagree + weak)


@pytest.mark.parametrize("strict", [False, True])
def test_select_warns_or_with_strict_stops_before_writing(tmp_path, capsys, strict, caplog):
    _table().save(tmp_path / "t.npz")
    out = tmp_path / "sel.csv"
    argv = ["select", str(tmp_path / "t.npz"), "--bands", "1-5", "--drop-loss-above", "9", "--out", str(out)]
    rc = main(argv + (["--strict"] if strict else []))
    if strict:
        assert rc == 2 and not out.exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--strict: the selection keeps 7% of the data" in err[0]
    else:
        assert rc == 0 and out.exists()
        assert "the selection keeps 7% of the data" in caplog.text


def test_the_verdict_ships_the_best_stage_on_val_and_says_what_refinement_did():
    from lossguided.recipe import verdict

    rows = [
        {"name": "pretrain", "checkpoint": "pretrain/best.pt", "val_mean_top1_error": 0.30},
        {"name": "refine1", "checkpoint": "refine1/best.pt", "val_mean_top1_error": 0.25},
        {"name": "refine2", "checkpoint": "refine2/best.pt", "val_mean_top1_error": 0.27},
    ]
    v = verdict(rows, n_val=1000)
    assert v["checkpoint"] == "refine1/best.pt" and v["val_change"] == pytest.approx(-0.03)
    assert v["val_change_se"] == pytest.approx(((0.3 * 0.7 + 0.27 * 0.73) / 1000) ** 0.5)
    assert v["verdict"].startswith("refinement changed val error by -0.0300 (+- 0.0202")
    assert "ship refine1/best.pt" in v["verdict"]
    worse = [rows[0], {**rows[1], "val_mean_top1_error": 0.31}]
    assert verdict(worse, n_val=1000)["checkpoint"] == "pretrain/best.pt"  # refinement did not help: ship stage 1
    assert verdict(rows, n_val=0) is None
