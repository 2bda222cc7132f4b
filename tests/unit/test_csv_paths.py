"""The one rule for image paths in every CSV the tool writes (`layout.csv_path`): absolute, so the CSV reads back
from any folder; a built-in image keeps its name. Checked here for the suspects list and bad_images.csv."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from lossguided.data.datasets import BadImage, write_bad_images
from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable
from lossguided.report.suspects import write_suspects


def read_paths(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_suspects_name_images_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = ["imgs/a.png", "imgs/b.png", "fashion-mnist:train#7"]
    table = LossTable(
        np.arange(3),
        np.array([0, 1, 0]),
        np.array([3.0, 1.0, 2.0], np.float32),
        np.ones(3, np.int64),
        np.array([1, 1, 0]),
        np.array(paths, dtype=object),
        ClassMap(("a", "b")),
    )
    out = tmp_path / "elsewhere" / "suspects.csv"
    write_suspects(table, out)
    monkeypatch.chdir("/")
    written = read_paths(out)
    assert written == [str(tmp_path / "imgs/a.png"), "fashion-mnist:train#7", str(tmp_path / "imgs/b.png")]
    assert all(os.path.isabs(p) for p in written if not p.startswith("fashion-mnist:"))


def test_bad_images_csv_names_images_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_bad_images(tmp_path / "bad_images.csv", [BadImage("train.csv", 2, 5, "imgs/broken.jpg", "truncated", 0)])
    assert read_paths(tmp_path / "bad_images.csv") == [str(tmp_path / "imgs/broken.jpg")]
