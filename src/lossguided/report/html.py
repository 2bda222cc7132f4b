"""`lossguided report`: one self-contained static HTML file for a run folder (inline CSS/JS, figures and thumbnails
as base64 data URIs, no network): the stages table (Table-2 style), learning curves, the loss histogram with the
drop threshold, and per class (worst first, searchable, 50 per page) the highest-loss samples beside the selected
lowest-loss ones. Classes are rendered in the browser from an embedded JSON, and only the `max_classes` worst
classes carry thumbnails, so the file stays small and quick with 50,000 classes (`pagesize.py` measures it). The page is
the autoescaped Jinja2 template `templates/report.html.j2` (with report.css and report.js beside it); the suspected
wrong labels of a class are only samples above the run's drop rule (`drop_rule`: per class for 'auto')."""

from __future__ import annotations

import base64
import datetime
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe
import numpy as np

from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.sources import load_manifest, source_for
from lossguided.io import write_text
from lossguided.losstable import LossTable
from lossguided.refine.apply import DropDecision, drop_decision
from lossguided.report import figures
from lossguided.report.images import ImageResolver
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
def high_loss_limit(losses: np.ndarray, rule: DropDecision) -> tuple[np.ndarray, str]:
    """[N] the loss above which each sample counts as high-loss (a suspected wrong label), and why: the run's drop
    rule, else (a config without one) the 90th percentile of all losses."""
    if rule.any:
        return rule.limit, "the run's drop rule"
    q = HIGH_LOSS_FALLBACK_QUANTILE
    value = float(np.quantile(losses, q)) if len(losses) else float("inf")
    return np.full(len(losses), value), f"the {q:.0%} quantile of all losses (the config sets no drop rule)"


def class_stats(
    table: LossTable, selected_ids: np.ndarray | None, high_loss: np.ndarray | float
) -> dict[str, np.ndarray]:
    """Per class: samples, selected, mean loss, share of high-loss samples (loss above `high_loss`, one value or
    one per sample [N]: the drop rule), share predicted as another class,
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


def class_samples(
    table: LossTable, selected_ids: np.ndarray | None, classes: np.ndarray, k: int, *, above: np.ndarray | None = None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each class in `classes`: positions of its `k` highest-loss samples that the selection did not keep
    and, with `above` [N], whose loss is above it (highest first; the suspects), and of its `k` lowest-loss
    selected samples (lowest first). Vectorised: a few sorts for all classes together."""
    wanted = np.zeros(len(table.classes), dtype=bool)
    wanted[classes] = True
    in_class = wanted[table.labels]
    chosen = np.zeros(len(table), dtype=bool)
    if selected_ids is not None and len(selected_ids):
        chosen = np.isin(table.ids, selected_ids)
    top = np.flatnonzero(in_class & ~chosen & (True if above is None else table.losses > above))
    top = top[rank_in_class(table.ids[top], table.labels[top], table.losses[top]) <= k]
    sel = np.flatnonzero(in_class & chosen)
    sel = sel[rank_in_class(table.ids[sel], table.labels[sel], -table.losses[sel]) <= k]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {
        int(c): (np.empty(0, np.int64), np.empty(0, np.int64)) for c in classes
    }
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


def _finite_or_none(values):
    """JSON has no infinity: an unbounded threshold (the class keeps everything) is null."""
    if values is None:
        return None
    if np.ndim(values) == 0:
        return round(float(values), 4) if np.isfinite(values) else None
    return [round(float(v), 4) if np.isfinite(v) else None for v in values]


def gallery_data(
    table: LossTable | None,
    selected_ids: np.ndarray | None,
    resolver: ImageResolver,
    options: ReportOptions,
    high_loss: np.ndarray,
    rule: dict,
) -> tuple[dict, dict]:
    """The JSON the page script renders, and counts for the notices (thumbnails, missing images). `high_loss` [N]:
    the loss above which a sample is a suspect; `rule`: {"name", "loss"} of a single threshold for the captions, or
    {"per_class": [K]} for per-class ones."""
    if table is None or len(table) == 0:
        empty = {
            "names": [],
            "n": [],
            "sel": [],
            "mean": [],
            "high": [],
            "other": [],
            "noisy": None,
            "worst": [],
            "detail": {},
            "thumbs": [],
            "prefix": "",
            "detailClasses": 0,
            "threshold": None,
            "rule": {"name": "", "loss": None},
        }
        return empty, {"thumbnails": 0, "missing": 0, "detail_classes": 0}
    stats = class_stats(table, selected_ids, high_loss)
    worst = stats["worst"]
    n_detail = len(worst) if options.max_classes is None else min(options.max_classes, len(worst))
    detail_classes = worst[:n_detail] if options.thumbs_per_class else worst[:0]
    samples = class_samples(table, selected_ids, detail_classes, options.thumbs_per_class, above=high_loss)
    needed = np.unique(np.concatenate([np.concatenate(v) for v in samples.values()] or [np.empty(0, np.int64)]))
    needed = needed.astype(np.int64)
    paths = [str(p) for p in table.paths[needed]]
    jpegs = resolver.thumbnails(
        paths,
        size=options.thumb_size,
        quality=options.thumb_quality,
        workers=options.workers,
        progress=options.progress,
    )
    thumbs, thumb_of = [], {}
    for pos, data in zip(needed.tolist(), jpegs, strict=True):
        if data is not None:
            thumb_of[pos] = len(thumbs)
            thumbs.append(base64.b64encode(data).decode("ascii"))
    prefix = path_prefix(paths)
    noisy = table.is_noisy

    def sample(p: int) -> list:
        wrong = -1 if noisy is None else int(noisy[p])
        return [
            int(table.ids[p]),
            str(table.paths[p])[len(prefix) :],
            round(float(table.losses[p]), 4),
            int(table.preds[p]),
            thumb_of.get(p, -1),
            wrong,
        ]

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
        "threshold": _finite_or_none(rule["per_class"]) if "per_class" in rule else None,
        "rule": {"name": rule.get("name", ""), "loss": _finite_or_none(rule.get("loss"))},
    }
    return data, {"thumbnails": len(thumbs), "missing": len(needed) - len(thumbs), "detail_classes": len(detail)}


# -- the page ---------------------------------------------------------------------------------------------------
STAGE_COLUMNS = [
    ("name", "stage"),
    ("train_samples", "train samples"),
    ("purity", "purity"),
    ("loss_auroc", "loss AUROC (noise)"),
    ("val_mean_top1_error", "val mean top-1 err"),
    ("test_mean_top1_error", "test mean top-1 err"),
    ("test_top1_error", "test top-1 err"),
]
TEMPLATE = "report.html.j2"


@functools.cache
def _environment() -> jinja2.Environment:
    """The page's templates (report/templates/, shipped as package data), autoescaped: a class name or path is
    always text. The included CSS and script are not HTML and are not escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lossguided.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )


def stage_cells(rows: list[dict]) -> list[list[str]]:
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return [[fmt(r.get(k)) for k, _ in STAGE_COLUMNS] for r in rows]


def json_for_script(data: dict) -> str:
    """JSON safe inside <script type="application/json">: every '<' is written as \\u003c, so no text (a class named
    '</script>' or '<!--<script>', which makes the HTML parser skip the real end tag) can end the data early."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _loss_section(run: RunFolder, rule: DropDecision, high_why: str, data: dict) -> tuple[dict | None, dict | None]:
    """What the page says about the loss table and the selection (None: no loss table / no selection)."""
    table = run.table
    if table is None:
        return None, None
    if rule.per_class is not None:
        finite = rule.per_class[np.isfinite(rule.per_class)]
        auto = f"auto: a threshold per class ({len(finite):,} of {len(rule.per_class):,} classes have one"
        auto += f", median {np.median(finite):.4g})" if finite.size else ")"
        drop = "; ".join([auto] + [f"{n} → loss > {v:.4g}" for n, v in rule.lines if not n.startswith("auto")])
        suspect_rule = "their class's threshold (auto)"
    else:
        drop = ", ".join(f"{n} → loss > {v:.4g}" for n, v in rule.lines) or "none in the config"
        suspect_rule = f"{data['rule']['loss']:.4g} ({high_why})" if data["rule"]["loss"] is not None else high_why
    losses = {
        "png": _b64(figures.loss_histogram(table.losses, table.is_noisy, rule.lines)),
        "source": f"record{run.round}/losses.npz",
        "samples": len(table),
        "classes": len(table.classes),
        "rule": drop,
        "dropped": int(rule.dropped.sum()) if rule.any else None,
        "suspect_rule": suspect_rule,
        "known_wrong": int(table.is_noisy.sum()) if table.is_noisy is not None else None,
    }
    sel = np.asarray(data["sel"])
    if run.selected_ids is None or not len(sel):
        return losses, None
    selection = {
        "source": f"refine{run.round}/selected.csv",
        "total": int(sel.sum()),
        "covered": int((sel > 0).sum()),
        "classes": len(sel),
        "median": f"{np.median(sel):g}",
        "max": int(sel.max()),
    }
    return losses, selection


def run_drop_decision(run: RunFolder) -> DropDecision:
    """The run's drop rules on its loss table: the same `drop_decision` call the selection made (an empty table
    without one)."""
    table = run.table
    if table is None:
        table = LossTable(
            *(np.empty(0, t) for t in (np.int64, np.int64, np.float32, np.int32, np.int64)), [], ClassMap(())
        )
    return drop_decision(
        table,
        drop_loss_above=run.refine_setting("drop_loss_above"),
        drop_quantile=run.refine_setting("drop_quantile"),
        drop_disagreeing=bool(run.refine_setting("drop_disagreeing")),
        drop_confident_other=bool(run.refine_setting("drop_confident_other")),
    )


def render_page(
    run: RunFolder, resolver: ImageResolver, options: ReportOptions = ReportOptions(), title: str | None = None
) -> tuple[str, dict]:
    """The whole HTML page (the Jinja2 template report.html.j2) and a summary dict (thumbnails, missing images,
    notices)."""
    notices = list(run.notices)
    table = run.table
    losses = table.losses if table is not None else np.empty(0, np.float32)
    rule = run_drop_decision(run)
    high_loss, high_why = high_loss_limit(losses, rule)
    if rule.per_class is not None:
        shown = {"per_class": rule.per_class}
    else:
        shown = {"name": high_why, "loss": float(high_loss[0]) if len(high_loss) else None}
    data, counts = gallery_data(table, run.selected_ids, resolver, options, high_loss, shown)
    data["pageSize"] = options.page_size
    if counts["missing"]:
        examples = ", ".join(resolver.missing[:3])
        notices.append(
            f"{counts['missing']} of {counts['missing'] + counts['thumbnails']} images to show are "
            f"missing or unreadable (e.g. {examples}); they appear as grey boxes"
        )
    notices += [f"image source problem: {e}" for e in dict.fromkeys(resolver.errors)]
    n_classes = len(data["names"])
    if counts["detail_classes"] < n_classes and options.thumbs_per_class:
        notices.append(
            f"thumbnails for the {counts['detail_classes']:,} worst of {n_classes:,} classes only "
            "(--max-classes); the others show their numbers"
        )
    loss_info, selection = _loss_section(run, rule, high_why, data)
    page = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=title or f"lossguided report: {run.path.name}",
            run_path=str(run.path),
            round=run.round,
            generated=datetime.datetime.now().isoformat(timespec="seconds"),
            notices=notices,
            stage_titles=[t for _, t in STAGE_COLUMNS],
            stage_rows=stage_cells(run.stages),
            curves_png=_b64(figures.learning_curves(run.curves)) if run.curves else None,
            losses=loss_info,
            selection=selection,
            prefix=data["prefix"],
            n_classes=n_classes,
            n_thumbnails=counts["thumbnails"],
            thumb_size=options.thumb_size,
            data_json=markupsafe.Markup(json_for_script(data)),  # '<' already escaped for a script element
        )
    )
    summary = {
        "classes": n_classes,
        "thumbnail_classes": counts["detail_classes"],
        "thumbnails": counts["thumbnails"],
        "missing_images": counts["missing"],
        "notices": notices,
    }
    return page, summary


def run_resolver(run: RunFolder) -> ImageResolver:
    """Images of a run: files by path; in-memory data (paths `<source>#<id>`) re-loaded through its image source,
    made with the run's data settings (its config's data section)."""
    data = (run.config or {}).get("data") or {}

    def in_memory(source: str) -> Manifest | None:
        try:
            if source_for(source).storage != "arrays":
                return None  # a file path, or a source whose pixels are not in memory
        except DataError:
            return None  # no source's name: a missing file
        return load_manifest(source, options=data)

    return ImageResolver(in_memory)


def build_report(
    run_dir: str | Path,
    options: ReportOptions = ReportOptions(),
    *,
    round: int | None = None,  # noqa: A002
) -> tuple[str, dict]:
    run = read_run(run_dir, round=round)
    return render_page(run, run_resolver(run), options)


def write_report(
    run_dir: str | Path, out: str | Path, options: ReportOptions = ReportOptions(), *, round: int | None = None
) -> dict:  # noqa: A002
    """Write the page; returns where, its size in bytes, and what it holds."""
    page, summary = build_report(run_dir, options, round=round)
    write_text(out, page)
    return {"out": str(out), "bytes": Path(out).stat().st_size, **summary}
