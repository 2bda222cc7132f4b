"""`lossguided report`: one self-contained static HTML file for a run folder (inline CSS/JS, figures and thumbnails
as base64 data URIs, no network): the stages table (Table-2 style), learning curves, the loss histogram with the
drop threshold, and per class (worst first, searchable, 50 per page) the highest-loss samples beside the selected
lowest-loss ones. Classes are rendered in the browser from an embedded JSON, and only the `max_classes` worst
classes carry thumbnails, so the file stays small and quick with 50,000 classes (`measure_page_size`)."""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossguided.data import fashion_mnist
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.io import write_text
from lossguided.losstable import LossTable
from lossguided.report import assets, figures
from lossguided.report.images import ImageResolver, options_from_config
from lossguided.report.rundir import RunFolder, read_run
from lossguided.report.suspects import rank_in_class

HIGH_LOSS_FALLBACK_QUANTILE = 0.9  # "high loss" without a drop threshold in the config: the top 10% of losses


@dataclass(frozen=True)
class ReportOptions:
    thumbs_per_class: int = 6  # highest-loss samples shown per class, and as many selected ones
    max_classes: int | None = 500  # the worst classes that get thumbnails (None: all); the rest show numbers only
    thumb_size: int = 48  # px, longer side
    thumb_quality: int = 70  # JPEG quality
    page_size: int = 50  # classes per page in the browser
    workers: int = 4  # threads reading images
    progress: bool | None = None  # progress bar (None: on a terminal, for long loops)

    def __post_init__(self) -> None:
        if self.thumbs_per_class < 0 or self.page_size < 1 or (self.max_classes is not None and self.max_classes < 0):
            raise ValueError("thumbs_per_class and max_classes must be >= 0, page_size >= 1")


# -- pure parts -------------------------------------------------------------------------------------------------
def drop_thresholds(losses: np.ndarray, drop_loss_above: float | str | None, drop_quantile: float | None,
                    labels: np.ndarray | None = None) -> list:  # fmt: skip
    """The selection's drop rules as (name, loss value): samples above either are dropped before ranking. For
    'auto' (a threshold per class) the line drawn is the median of the classes' thresholds."""
    out = []
    if drop_loss_above == "auto":
        if labels is not None and len(losses):
            from lossguided.refine.threshold import estimate_drop_threshold

            auto = estimate_drop_threshold(labels, losses, num_classes=int(labels.max()) + 1)
            finite = auto.per_class[np.isfinite(auto.per_class)]
            if finite.size:
                out.append((f"auto: median of per-class thresholds (est. noise {auto.noise_rate:.1%})",
                            float(np.median(finite))))  # fmt: skip
    elif drop_loss_above is not None:
        out.append(("drop_loss_above", float(drop_loss_above)))
    if drop_quantile and len(losses):
        out.append((f"drop_quantile {drop_quantile:g}", float(np.quantile(losses, 1.0 - drop_quantile))))
    return out


def high_loss_threshold(losses: np.ndarray, thresholds: list) -> tuple[float, str]:
    """The loss above which a sample counts as high-loss: the run's drop threshold, else the 90th percentile."""
    if thresholds:
        return min(t for _, t in thresholds), "the run's drop threshold"
    if not len(losses):
        return float("inf"), "none"
    q = HIGH_LOSS_FALLBACK_QUANTILE
    return float(np.quantile(losses, q)), f"the {q:.0%} quantile of all losses (the config sets no drop threshold)"


def class_stats(table: LossTable, selected_ids: np.ndarray | None, high_loss: float) -> dict[str, np.ndarray]:
    """Per class: samples, selected, mean loss, share of high-loss samples, share predicted as another class,
    share of known-wrong labels (benchmarks), and the worst-first order (high-loss share, then mean loss)."""
    k = len(table.classes)
    lab = table.labels
    n = np.bincount(lab, minlength=k)
    safe = np.maximum(n, 1)
    mean = np.bincount(lab, weights=table.losses.astype(np.float64), minlength=k) / safe
    high = np.bincount(lab, weights=table.losses > high_loss, minlength=k) / safe
    other = np.bincount(lab, weights=table.preds != lab, minlength=k) / safe
    sel = np.zeros(k, dtype=np.int64)
    if selected_ids is not None and len(selected_ids):
        sel = np.bincount(lab[np.isin(table.ids, selected_ids)], minlength=k)
    worst = np.lexsort((np.arange(k), -mean, -high))
    out = {"n": n, "sel": sel, "mean": mean, "high": high, "other": other, "worst": worst}
    if table.true_labels is not None:
        out["noisy"] = np.bincount(lab, weights=table.is_noisy, minlength=k) / safe
    return out


def class_samples(table: LossTable, selected_ids: np.ndarray | None, classes: np.ndarray,
                  k: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """For each class in `classes`: positions of its `k` highest-loss samples that the selection did not keep
    (highest first; the suspects) and of its `k` lowest-loss selected samples (lowest first). Vectorised: a few
    sorts for all classes together."""
    wanted = np.zeros(len(table.classes), dtype=bool)
    wanted[classes] = True
    in_class = wanted[table.labels]
    chosen = np.zeros(len(table), dtype=bool)
    if selected_ids is not None and len(selected_ids):
        chosen = np.isin(table.ids, selected_ids)
    top = np.flatnonzero(in_class & ~chosen)
    top = top[rank_in_class(table.ids[top], table.labels[top], table.losses[top]) <= k]
    sel = np.flatnonzero(in_class & chosen)
    sel = sel[rank_in_class(table.ids[sel], table.labels[sel], -table.losses[sel]) <= k]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {int(c): (np.empty(0, np.int64), np.empty(0, np.int64))
                                                     for c in classes}  # fmt: skip
    for which, pos, sign in ((0, top, -1.0), (1, sel, 1.0)):
        if not len(pos):
            continue
        pos = pos[np.lexsort((table.ids[pos], sign * table.losses[pos].astype(np.float64), table.labels[pos]))]
        labels = table.labels[pos]
        cuts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        for a, b in zip(cuts, [*cuts[1:], len(pos)], strict=True):
            c = int(labels[a])
            out[c] = (pos[a:b], out[c][1]) if which == 0 else (out[c][0], pos[a:b])
    return out


def path_prefix(paths: list[str]) -> str:
    """The longest common folder prefix (ending in '/', or '#' for in-memory images), stored once instead of in
    every path."""
    if len(paths) < 2:
        return ""
    prefix = os.path.commonprefix(paths)
    return prefix[: max(prefix.rfind("/"), prefix.rfind("#")) + 1]


def gallery_data(table: LossTable | None, selected_ids: np.ndarray | None, resolver: ImageResolver,
                 options: ReportOptions, high_loss: float) -> tuple[dict, dict]:  # fmt: skip
    """The JSON the page script renders, and counts for the notices (thumbnails, missing images)."""
    if table is None or len(table) == 0:
        empty = {"names": [], "n": [], "sel": [], "mean": [], "high": [], "other": [], "noisy": None, "worst": [],
                 "detail": {}, "thumbs": [], "prefix": "", "detailClasses": 0}  # fmt: skip
        return empty, {"thumbnails": 0, "missing": 0, "detail_classes": 0}
    stats = class_stats(table, selected_ids, high_loss)
    worst = stats["worst"]
    n_detail = len(worst) if options.max_classes is None else min(options.max_classes, len(worst))
    detail_classes = worst[:n_detail] if options.thumbs_per_class else worst[:0]
    samples = class_samples(table, selected_ids, detail_classes, options.thumbs_per_class)
    needed = np.unique(np.concatenate([np.concatenate(v) for v in samples.values()] or [np.empty(0, np.int64)]))
    needed = needed.astype(np.int64)
    paths = [str(p) for p in table.paths[needed]]
    jpegs = resolver.thumbnails(paths, size=options.thumb_size, quality=options.thumb_quality,
                                workers=options.workers, progress=options.progress)  # fmt: skip
    thumbs, thumb_of = [], {}
    for pos, data in zip(needed.tolist(), jpegs, strict=True):
        if data is not None:
            thumb_of[pos] = len(thumbs)
            thumbs.append(base64.b64encode(data).decode("ascii"))
    prefix = path_prefix(paths)
    noisy = table.is_noisy

    def sample(p: int) -> list:
        wrong = -1 if noisy is None else int(noisy[p])
        return [int(table.ids[p]), str(table.paths[p])[len(prefix):], round(float(table.losses[p]), 4),
                int(table.preds[p]), thumb_of.get(p, -1), wrong]  # fmt: skip

    detail = {str(c): [[sample(p) for p in top], [sample(p) for p in sel]] for c, (top, sel) in samples.items()}
    r4 = lambda a: np.round(a, 4).tolist()  # noqa: E731
    data = {
        "names": list(table.classes.names),
        "n": stats["n"].tolist(),
        "sel": stats["sel"].tolist(),
        "mean": r4(stats["mean"]),
        "high": r4(stats["high"]),
        "other": r4(stats["other"]),
        "noisy": r4(stats["noisy"]) if "noisy" in stats else None,
        "worst": worst.tolist(),
        "detail": detail,
        "thumbs": thumbs,
        "prefix": prefix,
        "detailClasses": int(len(detail_classes)),
    }
    return data, {"thumbnails": len(thumbs), "missing": len(needed) - len(thumbs), "detail_classes": len(detail)}


# -- the page ---------------------------------------------------------------------------------------------------
STAGE_COLUMNS = [("name", "stage"), ("train_samples", "train samples"), ("purity", "purity"),
                 ("loss_auroc", "loss AUROC (noise)"), ("val_mean_top1_error", "val mean top-1 err"),
                 ("test_mean_top1_error", "test mean top-1 err"), ("test_top1_error", "test top-1 err")]  # fmt: skip


def stages_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="empty">no finished stage yet</p>'
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in STAGE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k)))}</td>" for k, _ in STAGE_COLUMNS) + "</tr>"
                   for r in rows)  # fmt: skip
    return f'<table class="stages"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def png_img(png: bytes, alt: str, element_id: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="figure" id="{element_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def json_for_script(data: dict) -> str:
    """JSON safe inside <script type="application/json">: every '<' is written as \\u003c, so no text (a class named
    '</script>' or '<!--<script>', which makes the HTML parser skip the real end tag) can end the data early."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def render_page(run: RunFolder, resolver: ImageResolver, options: ReportOptions = ReportOptions(),
                title: str | None = None) -> tuple[str, dict]:  # fmt: skip
    """The whole HTML page and a summary dict (thumbnails, missing images, notices)."""
    notices = list(run.notices)
    table = run.table
    losses = table.losses if table is not None else np.empty(0, np.float32)
    thresholds = drop_thresholds(losses, run.refine_setting("drop_loss_above"), run.refine_setting("drop_quantile"),
                                 table.labels if table is not None else None)  # fmt: skip
    high_loss, high_why = high_loss_threshold(losses, thresholds)
    data, counts = gallery_data(table, run.selected_ids, resolver, options, high_loss)
    data["pageSize"] = options.page_size
    if counts["missing"]:
        examples = ", ".join(resolver.missing[:3])
        notices.append(f"{counts['missing']} of {counts['missing'] + counts['thumbnails']} images to show are "
                       f"missing or unreadable (e.g. {examples}); they appear as grey boxes")  # fmt: skip
    notices += [f"image source problem: {e}" for e in dict.fromkeys(resolver.errors)]
    n_classes = len(data["names"])
    if counts["detail_classes"] < n_classes and options.thumbs_per_class:
        notices.append(f"thumbnails for the {counts['detail_classes']:,} worst of {n_classes:,} classes only "
                       "(--max-classes); the others show their numbers")  # fmt: skip

    title = title or f"lossguided report: {run.path.name}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">run folder {html.escape(str(run.path))} · round {run.round} · generated '
             f"{datetime.datetime.now().isoformat(timespec='seconds')}</p>"]  # fmt: skip
    parts.append('<div id="notices">' + "".join(
        f'<div class="notice"><b>Missing:</b> {html.escape(n)}</div>' for n in notices) + "</div>")  # fmt: skip
    parts.append("<h2>Stages</h2>" + stages_table(run.stages))
    parts.append("<h2>Learning curves</h2>")
    parts.append(png_img(figures.learning_curves(run.curves), "learning curves", "curves") if run.curves
                 else '<p class="empty">no metrics.jsonl in any stage yet</p>')  # fmt: skip
    parts.append("<h2>Loss distribution</h2>")
    if table is not None:
        noisy = table.is_noisy
        parts.append(png_img(figures.loss_histogram(table.losses, noisy, thresholds), "loss histogram", "losses"))
        drop = ", ".join(f"{n} → loss > {v:.4g}" for n, v in thresholds) or "none in the config"
        dropped = int((table.losses > high_loss).sum()) if thresholds else 0
        parts.append(
            f'<p class="meta">record{run.round}/losses.npz: {len(table):,} samples, '
            f"{len(table.classes):,} classes. Drop rule: {html.escape(drop)}"
            f"{f' ({dropped:,} samples dropped)' if thresholds else ''}. "
            f"High loss on this page means loss &gt; {high_loss:.4g} ({html.escape(high_why)})."
            + (f" Known wrong labels: {int(noisy.sum()):,}." if noisy is not None else "")
            + "</p>"
        )
        sel = np.asarray(data["sel"])
        if run.selected_ids is not None and len(sel):
            parts.append(f'<p class="meta">refine{run.round}/selected.csv: {int(sel.sum()):,} samples selected; '
                         f"{int((sel > 0).sum()):,} of {len(sel):,} classes covered; per class: median "
                         f"{np.median(sel):g}, max {int(sel.max())}.</p>")  # fmt: skip
    else:
        parts.append('<p class="empty">no loss table</p>')
    parts.append(
        "<h2>Classes</h2>"
        '<p class="meta">Per class: the highest-loss samples the selection left out (the likeliest wrong labels; '
        "red frame = label known to be wrong) beside the lowest-loss samples the selection kept. Caption: id, "
        "average loss, the model's predicted class, the path (hover for all of it)"
        + (f", relative to <code>{html.escape(data['prefix'])}</code>" if data["prefix"] else "")
        + ". <code>lossguided suspects</code> writes the full ranked list as CSV.</p>"
        '<div class="controls"><input id="class-search" type="search" placeholder="search classes by name" '
        'autocomplete="off"> <label>sort <select id="class-sort">'
        '<option value="worst">worst first (high-loss share, mean loss)</option>'
        '<option value="mean">highest mean loss</option><option value="size">largest</option>'
        '<option value="small">smallest</option><option value="name">name</option></select></label> '
        '<button id="prev-page">&larr; prev</button><button id="next-page">next &rarr;</button> '
        '<span id="page-info"></span></div><div id="gallery"></div>'
    )
    parts.append(f'<footer>lossguided report · {n_classes:,} classes · {counts["thumbnails"]:,} thumbnails '
                 f"({options.thumb_size}px JPEG) · self-contained, no network</footer>")  # fmt: skip
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{assets.CSS}</style></head><body>"
        + "\n".join(parts)
        + f'\n<script type="application/json" id="report-data">{json_for_script(data)}</script>'
        + f"\n<script>{assets.JS}</script>\n</body></html>\n"
    )
    summary = {"classes": n_classes, "thumbnail_classes": counts["detail_classes"], "thumbnails": counts["thumbnails"],
               "missing_images": counts["missing"], "notices": notices}  # fmt: skip
    return page, summary


def run_resolver(run: RunFolder) -> ImageResolver:
    """Images of a run: files by path; the built-in Fashion-MNIST by id, made with the run's data options."""

    def builtin(source: str) -> Manifest | None:
        if not source.startswith(fashion_mnist.NAME + ":"):
            return None
        data = (run.config or {}).get("data")
        opts = options_from_config(data) if data else fashion_mnist.FashionMnistOptions()
        return fashion_mnist.load(source.split(":", 1)[1], opts)

    return ImageResolver(builtin)


def build_report(run_dir: str | Path, options: ReportOptions = ReportOptions(), *, round: int = 1  # noqa: A002
                 ) -> tuple[str, dict]:  # fmt: skip
    run = read_run(run_dir, round=round)
    return render_page(run, run_resolver(run), options)


def write_report(run_dir: str | Path, out: str | Path, options: ReportOptions = ReportOptions(), *,
                 round: int = 1) -> dict:  # noqa: A002  # fmt: skip
    """Write the page; returns where, its size in bytes, and what it holds."""
    page, summary = build_report(run_dir, options, round=round)
    write_text(out, page)
    return {"out": str(out), "bytes": Path(out).stat().st_size, **summary}


# -- size at scale ----------------------------------------------------------------------------------------------
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


def measure_page_size(n_classes: int = 50_000, *, samples_per_class: int = 20,
                      options: ReportOptions = ReportOptions(), image_size: int = 64,
                      out: str | Path | None = None) -> dict:  # fmt: skip
    """Build the real page for a synthetic run with `n_classes` classes and measure it: total bytes, the share of
    the thumbnails and of the class index, bytes per thumbnail, and the build time."""
    from lossguided.refine.apply import select_from_table

    t0 = time.perf_counter()
    table = synthetic_table(n_classes, samples_per_class)
    selected = select_from_table(table, bands=["1-5"], drop_loss_above=None, drop_quantile=0.03, per_class=None)
    run = RunFolder(path=Path("synthetic"), round=1, config={"refine": {"drop_quantile": 0.03}}, table=table,
                    selected_ids=selected,
                    stages=[{"name": "pretrain", "train_samples": len(table)}])  # fmt: skip
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
