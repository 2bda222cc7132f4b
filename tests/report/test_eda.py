"""`lossguided eda`: class frequencies and the long tail, sizes from image headers, planted duplicates found,
missing images listed instead of stopping."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lossguided.cli import main
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.storage import Storage
from lossguided.report.eda import duplicate_groups, imbalance_summary, load_manifest_for_eda, run_eda
from lossguided.report.images import header_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def long_tail_csv(tmp_path: Path) -> dict:
    """Classes of 12, 6, 3 and 1 images of known sizes; one file copied under another name and label; one row
    whose image does not exist."""
    counts = {"head": 12, "mid": 6, "low": 3, "rare": 1}
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(1)
    rows, sizes = [], {}
    for label, n in counts.items():
        for j in range(n):
            w, h = 20 + 3 * j, 10 + len(label)
            name = f"img/{label}_{j}.{'jpg' if j % 2 else 'png'}"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
            rows.append((name, label))
            sizes[name] = (w, h)
    shutil.copyfile(tmp_path / "img/head_3.jpg", tmp_path / "img/copy_of_head_3.jpg")
    rows.append(("img/copy_of_head_3.jpg", "rare"))  # the same picture filed under another class
    rows.append(("img/gone.jpg", "mid"))  # missing file
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return {"csv": path, "sizes": sizes}


def test_eda_on_a_csv_finds_tail_duplicates_and_missing(long_tail_csv, tmp_path, capsys):
    out = tmp_path / "eda"
    assert main(["eda", str(long_tail_csv["csv"]), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "imbalance ratio 6.0" in printed and "1 missing" in printed
    result = json.loads((out / "eda.json").read_text())
    assert result["classes"] == 4 and result["images"] == 12 + 7 + 3 + 2  # mid has the missing row, rare the copy
    assert result["imbalance_ratio"] == 12 / 2
    assert [c["class"] for c in result["smallest_classes"]][:2] == ["rare", "low"]
    assert result["head"] == {"classes": 1, "share_of_images": pytest.approx(12 / 24)}

    dups = list(csv.DictReader(open(out / "duplicates.csv")))
    assert {Path(d["path"]).name for d in dups} == {"head_3.jpg", "copy_of_head_3.jpg"}
    assert {d["label"] for d in dups} == {"head", "rare"} and {d["labels_differ"] for d in dups} == {"1"}
    assert result["duplicates"]["groups_with_different_labels"] == 1

    missing = list(csv.DictReader(open(out / "missing.csv")))
    assert [(Path(m["path"]).name, m["row"], m["problem"]) for m in missing] == [("gone.jpg", "25", "missing")]

    counts = list(csv.DictReader(open(out / "class_counts.csv")))
    assert [(c["class"], int(c["images"])) for c in counts] == [("head", 12), ("mid", 7), ("low", 3), ("rare", 2)]
    assert float(counts[-1]["cumulative_share"]) == pytest.approx(1.0)

    widths = [w for w, _ in long_tail_csv["sizes"].values()] + [29]  # + the copy of head_3 (20 + 3*3)
    assert result["image_sizes"]["width"]["max"] == max(widths) and result["image_sizes"]["readable"] == 23
    for name in ("class_frequency.png", "image_sizes.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_sizes_come_from_headers_without_decoding(tmp_path):
    """A file cut after its header still gives its size: only the header is read."""
    img = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(img)
    cut = tmp_path / "cut.png"
    cut.write_bytes(img.read_bytes()[:100])
    assert header_size(cut) == (500, 300)
    with pytest.raises(OSError):
        Image.open(cut).load()  # decoding it would fail
    assert header_size(tmp_path / "nope.png") is None


def test_in_memory_duplicates_are_found_by_pixel_hash(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 8, 8), dtype=np.uint8)
    images[4] = images[1]
    m = Manifest(
        ids=np.arange(10, 16),
        labels=np.array([0, 0, 1, 1, 1, 2]),
        classes=ClassMap(("a", "b", "c")),
        source="mem:train",
        storage=Storage.arrays(images),
    )
    result = run_eda(m, tmp_path / "eda", progress=False)
    assert result["duplicates"]["groups"] == 1 and result["duplicates"]["examples"] == [
        ["mem:train#11", "mem:train#14"]
    ]
    assert result["image_sizes"]["read_from"] == "array shape" and result["image_sizes"]["width"]["median"] == 8
    assert not (tmp_path / "eda" / "missing.csv").exists()


def test_pure_summaries():
    s = imbalance_summary(np.array([100, 1, 10, 0]), ["a", "b", "c", "d"], head_fraction=0.25, tail_fraction=0.5)
    assert s["imbalance_ratio"] == 100 and s["empty_classes"] == 1 and s["classes_under_5_images"] == 2
    assert s["head"]["share_of_images"] == pytest.approx(100 / 111) and s["tail"]["share_of_images"] == 1 / 111
    groups = duplicate_groups(["x", None, "y", "x", None, "y", "x"])
    assert [g.tolist() for g in groups] == [[0, 3, 6], [2, 5]]


@pytest.mark.fashion_mnist
def test_eda_on_the_builtin_data(tmp_path, capsys):
    assert main(["eda", "fashion-mnist", "--train-limit", "300", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eda.json").read_text())
    assert result["images"] == 300 and result["classes"] == 10 and result["image_sizes"]["width"]["max"] == 28


def test_load_for_eda_keeps_rows_with_missing_images(long_tail_csv):
    m = load_manifest_for_eda(str(long_tail_csv["csv"]))
    assert len(m) == 24
