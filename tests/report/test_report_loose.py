"""`report` on what the stage-by-stage commands leave (no `lossguided run` folder), on a folder with nothing to
show (one line, non-zero exit), and gallery captions that keep a SKU's distinguishing tail, in a real Chromium."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cdp_pipe import Browser, find_chromium
from PIL import Image

from lossguided.cli import main
from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable

SKUS = ("SKU-10023-CUP", "SKU-10023-MUG", "SKU-20417-PLATE", "SKU-20417-BOWL")


def make_loose_folder(root: Path) -> Path:
    """runs/ as the README's stage by stage leaves it: losses.npz, clean.csv (+ .summary.csv), pre/metrics.jsonl."""
    rng = np.random.default_rng(0)
    runs = root / "runs"
    (root / "img").mkdir(parents=True)
    (runs / "pre").mkdir(parents=True)
    n = 40
    labels = np.arange(n) % 4
    preds = (labels + (rng.random(n) < 0.3)) % 4
    paths = []
    for i in range(n):
        p = root / "img" / f"{i}.png"
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    losses = rng.gamma(1.5, 0.5, n).astype(np.float32)
    table = LossTable(
        np.arange(n), labels, losses, np.ones(n, np.int64), preds, np.array(paths, dtype=object), ClassMap(SKUS)
    )
    table.save(runs / "losses.npz")
    with open(runs / "clean.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label"])
        w.writerows([i, paths[i], SKUS[labels[i]]] for i in range(0, n, 2))
    (runs / "clean.summary.csv").write_text("class,available,selected\n")
    (runs / "pre" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.2, "val_mean_top1_error": 0.5}\n')
    return runs


def test_report_reads_a_stage_by_stage_folder(tmp_path, capsys):
    runs = make_loose_folder(tmp_path)
    page = tmp_path / "report.html"
    assert main(["report", str(runs), "--out", str(page)]) == 0
    html = page.read_text()
    assert "is not a `lossguided run` folder" in html and "SKU-20417-PLATE" in html
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "e.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no loss table in it; report needs one of them" in err[0]
    assert not (tmp_path / "e.html").exists()


CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (/usr/bin/chromium): `make browser` installs it")
def test_captions_keep_the_tail_of_class_names_and_the_whole_name_on_hover(tmp_path):
    runs = make_loose_folder(tmp_path)
    page = tmp_path / "report.html"
    assert main(["report", str(runs), "--out", str(page)]) == 0
    with Browser(CHROMIUM, tmp_path / "profile") as browser:
        browser.open_page(width=1280, height=900)
        browser.navigate(page.as_uri())
        preds = browser.evaluate(
            "Array.from(document.querySelectorAll('#gallery .pred'))"
            ".map(d => [d.textContent, d.title, d.scrollWidth <= d.clientWidth])"
        )
    assert preds, "no captions in the gallery"
    for text, title, fits in preds:
        assert fits, f"caption {text!r} is cut by its tile"
        name = title.removeprefix("predicted: ")
        assert name in SKUS and text.startswith("→ ")
        assert name.endswith(text.removeprefix("→ ").lstrip("…"))  # the tail (MUG vs CUP) stays visible
