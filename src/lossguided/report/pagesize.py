"""The report page at scale without any file: a synthetic run (SKU-like class names, wrong labels with higher
losses, product-like images made from the id) rendered through the real page, measured in bytes and seconds
(`lossguided.report.measure_page_size`, `benchmarks/report_page_size.py`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable
from lossguided.report.html import ReportOptions, render_page
from lossguided.report.images import ImageResolver
from lossguided.report.rundir import RunFolder


class SyntheticImages(ImageResolver):
    """Deterministic product-like images made from the id (a coloured object on a light, slightly noisy
    background), so a page with 50,000 classes can be built without any file."""

    def __init__(self, size: int = 64) -> None:
        super().__init__()
        self.size = size

    def _pixels(self, source: str, sample_id: int) -> np.ndarray | None:
        rng = np.random.default_rng(sample_id)
        s = self.size
        img = 235 + rng.normal(0, 6, (s, s, 3))
        y0, x0 = rng.integers(2, s // 3, 2)
        y1, x1 = rng.integers(2 * s // 3, s - 2, 2)
        colour = rng.integers(30, 220, 3)
        shade = np.linspace(0.7, 1.2, y1 - y0)[:, None, None]
        img[y0:y1, x0:x1] = colour * shade + rng.normal(0, 10, (y1 - y0, x1 - x0, 3))
        return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_table(n_classes: int, samples_per_class: int, *, noise_rate: float = 0.2, seed: int = 0) -> LossTable:
    """A loss table with `n_classes` classes (SKU-like names) of `samples_per_class` samples, wrong labels having
    higher losses, paths like those of a real image folder."""
    rng = np.random.default_rng(seed)
    n = n_classes * samples_per_class
    true = np.repeat(np.arange(n_classes), samples_per_class)
    noisy = rng.random(n) < noise_rate
    labels = np.where(noisy, rng.integers(0, n_classes, n), true)
    losses = np.where(labels != true, rng.gamma(4.0, 1.5, n), rng.gamma(1.2, 0.4, n)).astype(np.float32)
    preds = np.where(rng.random(n) < 0.7, true, rng.integers(0, n_classes, n))
    names = ClassMap(tuple(f"sku-{i:06d}" for i in range(n_classes)))
    paths = np.array([f"synthetic:train#{i}" for i in range(n)], dtype=object)
    return LossTable(np.arange(n), labels, losses, np.ones(n, np.int64), preds, paths, names, true)


def measure_page_size(
    n_classes: int = 50_000,
    *,
    samples_per_class: int = 20,
    options: ReportOptions = ReportOptions(),
    image_size: int = 64,
    out: str | Path | None = None,
) -> dict:
    """Build the real page for a synthetic run with `n_classes` classes and measure it: total bytes, the share of
    the thumbnails and of the class index, bytes per thumbnail, and the build time."""
    from lossguided.refine.apply import select_from_table

    t0 = time.perf_counter()
    table = synthetic_table(n_classes, samples_per_class)
    selected = select_from_table(table, bands=["1-5"], drop_loss_above=None, drop_quantile=0.03, per_class=None)
    run = RunFolder(
        path=Path("synthetic"),
        round=1,
        config={"refine": {"drop_quantile": 0.03}},
        table=table,
        selected_ids=selected,
        stages=[{"name": "pretrain", "train_samples": len(table)}],
    )
    page, summary = render_page(run, SyntheticImages(image_size), options, title=f"synthetic {n_classes} classes")
    seconds = time.perf_counter() - t0
    raw = page.encode("utf-8")
    if out is not None:
        Path(out).write_bytes(raw)
    start = raw.index(b'"thumbs":[')
    thumb_bytes = raw.index(b"]", start) - start
    return {
        "classes": n_classes,
        "samples": len(table),
        "thumbs_per_class": options.thumbs_per_class,
        "max_classes": options.max_classes,
        "thumbnail_classes": summary["thumbnail_classes"],
        "thumbnails": summary["thumbnails"],
        "bytes": len(raw),
        "mib": round(len(raw) / 2**20, 2),
        "thumbnail_bytes": thumb_bytes,
        "bytes_per_thumbnail": round(thumb_bytes / max(summary["thumbnails"], 1), 1),
        "other_bytes": len(raw) - thumb_bytes,
        "build_seconds": round(seconds, 1),
    }
