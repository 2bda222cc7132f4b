"""CSVs people open in a spreadsheet hold no cell that runs as a formula (OWASP: a leading quote), and `relabel`
reads the quoted cells back exactly."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.storage import Storage
from lossguided.io import safe_cell, unsafe_cell
from lossguided.losstable import LossTable
from lossguided.report.eda import run_eda
from lossguided.report.suspects import read_corrections, relabel_manifest, write_suspects

HOSTILE = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "\nLF", "'=quoted already", "''=x"]
PLAIN = ["shirt", "'plain quote", "a=b", "", "1.5"]


@pytest.mark.parametrize("text", HOSTILE + PLAIN)
def test_safe_cell_is_neutral_and_exactly_undone(text):
    cell = safe_cell(text)
    assert unsafe_cell(cell) == text
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n"))
    assert (cell == text) == (text in PLAIN)


def test_numbers_stay_numbers():
    assert safe_cell(-3) == -3 and safe_cell(2.5) == 2.5


def hostile_table(tmp_path):
    names = ("=cmd|' /C calc'!A0", "@shirt", "plain")
    classes = ClassMap(tuple(sorted(names)))
    n = 6
    labels = np.arange(n) % 3
    return LossTable(
        ids=np.arange(n),
        labels=labels,
        losses=np.linspace(3, 0.1, n).astype(np.float32),
        n_records=np.ones(n, np.int32),
        preds=(labels + 1) % 3,
        classes=classes,
        paths=np.array([f"-img{i}.png" for i in range(n)], dtype=object),
    )


def test_suspects_csv_is_safe_and_relabel_reads_it_back(tmp_path):
    table = hostile_table(tmp_path)
    write_suspects(table, tmp_path / "suspects.csv")
    with open(tmp_path / "suspects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = [c for r in rows for c in r.values() if c]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), cells
    # a person copies the (quoted) predicted class into corrected_label, as the spreadsheet shows it
    for r in rows:
        r["corrected_label"] = r["predicted"]
    with open(tmp_path / "fixed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    corrections = read_corrections(tmp_path / "fixed.csv")
    names = np.array(table.classes.names, dtype=object)
    assert {i: c for i, (_, c, *_) in corrections.items()} == {
        int(i): names[p] for i, p in zip(table.ids, table.preds, strict=True)
    }
    manifest = Manifest(
        ids=table.ids,
        labels=table.labels,
        classes=table.classes,
        source="m.csv",
        storage=Storage.files(np.array([os.path.abspath(p) for p in table.paths], dtype=object)),  # the same images
    )
    summary = relabel_manifest(manifest, tmp_path / "fixed.csv", tmp_path / "relabelled.csv")
    assert summary["relabelled"] == 6  # the labels matched exactly: no 'not a class' error, no wrong-manifest error


def test_eda_tables_are_safe(tmp_path):
    table = hostile_table(tmp_path)
    images = np.zeros((6, 8, 8), np.uint8)
    m = Manifest(
        ids=table.ids, labels=table.labels, classes=table.classes, source="mem", storage=Storage.arrays(images)
    )
    run_eda(m, tmp_path / "eda", workers=1, progress=False)
    for name in ("class_counts.csv", "duplicates.csv"):
        with open(tmp_path / "eda" / name, newline="") as f:
            cells = [c for row in csv.reader(f) for c in row]
        assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), (name, cells)
        assert any(c.startswith("'=cmd") for c in cells) or name == "duplicates.csv"


def test_selected_csv_is_safe_and_reads_back_as_the_same_training_manifest(tmp_path):
    from lossguided.data.manifest import read_csv
    from lossguided.refine.apply import write_selection

    table = hostile_table(tmp_path)
    for i in range(len(table)):
        (tmp_path / f"-img{i}.png").write_bytes(b"")  # read_csv checks existence only
    table.paths = np.array([str(tmp_path / f"-img{i}.png") for i in range(len(table))], dtype=object)
    write_selection(table, table.ids, tmp_path / "selected.csv")
    for name in ("selected.csv", "selected.summary.csv"):
        with open(tmp_path / name, newline="") as f:
            cells = [c for row in csv.reader(f) for c in row]
        assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), (name, cells)
    back = read_csv(tmp_path / "selected.csv", cache_dir=tmp_path / "cache")
    assert sorted(back.classes.names) == sorted(table.classes.names)
    assert [back.classes.names[i] for i in back.labels] == [table.classes.names[i] for i in table.labels]
