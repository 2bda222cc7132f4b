"""`refine.relabel_confident`: the dropped samples that are confidently another class come back under that class."""

import sys
from pathlib import Path

import numpy as np

from lossguided.refine.apply import drop_decision, relabel_candidates, write_selection

sys.path.insert(0, str(Path(__file__).parent))
from test_hybrid_rule import _table  # noqa: E402


def test_dropped_look_alikes_come_back_under_the_class_they_show():
    table, wrong = _table()
    dropped = drop_decision(table, drop_loss_above="hybrid").dropped
    ids, labels = relabel_candidates(table, dropped)
    pos = np.searchsorted(table.ids, ids)
    assert dropped[pos].all() and (labels != table.labels[pos]).all()  # only dropped ones, only to another class
    assert len(ids) >= 0.8 * (dropped & wrong).sum()  # most dropped look-alikes are recovered ...
    assert (labels == table.true_labels[pos]).mean() >= 0.95  # ... under their true class
    none, _ = relabel_candidates(table, np.zeros(len(table), bool))
    assert len(none) == 0


def test_the_selection_csv_carries_the_new_labels(tmp_path):
    table, _ = _table()
    ids = table.ids[:4]
    write_selection(table, ids, tmp_path / "sel.csv", labels=np.array([1, 1, 0, 0]))
    rows = (tmp_path / "sel.csv").read_text().splitlines()[1:]
    assert [r.split(",")[-1] for r in rows] == ["shirt", "shirt", "tshirt", "tshirt"]
    summary = (tmp_path / "sel.summary.csv").read_text().splitlines()[1:]
    assert summary == ["tshirt,600,2", "shirt,191,2"]
