"""Matplotlib figures for the reports, drawn on the Agg canvas without pyplot (no global state, no display), each
returned as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

CLEAN, NOISY, MARK = "#3b7dd8", "#d8453b", "#222222"


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def class_frequency(
    sorted_counts: np.ndarray,
    *,
    head_classes: int,
    head_share: float,
    tail_classes: int,
    tail_share: float,
    names: list[str] | None = None,
) -> bytes:
    return to_png(
        class_frequency_figure(
            sorted_counts,
            head_classes=head_classes,
            head_share=head_share,
            tail_classes=tail_classes,
            tail_share=tail_share,
            names=names,
        )
    )


NAMED_CLASSES = 40  # up to this many classes, the class-frequency figure names each one under its bar


def class_frequency_figure(
    sorted_counts: np.ndarray,
    *,
    head_classes: int,
    head_share: float,
    tail_classes: int,
    tail_share: float,
    names: list[str] | None = None,
) -> Figure:
    """Images per class, classes sorted by size (largest first), log scale, head and tail shaded and labelled.
    With few classes (<= NAMED_CLASSES) and their `names` (in the same order), each bar is named; otherwise the
    axis counts ranks in whole numbers (1, 10,000, ...), readable from 4 to 50,000 classes."""
    k = len(sorted_counts)
    named = names is not None and 0 < k <= NAMED_CLASSES
    fig = Figure(figsize=(max(8, 0.28 * k) if named else 8, 4))
    ax = fig.add_subplot()
    y = np.maximum(sorted_counts, 0.8)  # log scale: keep empty classes visible just under 1
    edges = np.arange(k + 1) + 0.5
    ax.stairs(y, edges, baseline=0.8, fill=True, color=CLEAN, alpha=0.6)
    ax.stairs(y, edges, baseline=0.8, color=CLEAN, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlim(0.5, k + 0.5)
    if named:
        ax.set_xticks(np.arange(1, k + 1), [_tail(str(n), 18) for n in names], rotation=60, ha="right", fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("class (largest first)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, min_n_ticks=1))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
        ax.set_xlabel("class rank (largest first)")
    ax.set_ylabel("images per class (log)")
    ax.set_title(f"Class frequency: {k:,} classes, {int(sorted_counts.sum()):,} images")
    if head_classes:
        ax.axvspan(0.5, head_classes + 0.5, color="#f2b134", alpha=0.25, linewidth=0)
        ax.text(
            0.02,
            0.04,
            f"head: the largest {_classes(head_classes)} {head_share:.1%} of images",
            transform=ax.transAxes,
            fontsize=9,
        )
    if tail_classes:
        ax.axvspan(k - tail_classes + 0.5, k + 0.5, color="#9b59b6", alpha=0.15, linewidth=0)
        ax.text(
            0.98,
            0.94,
            f"tail: the smallest {_classes(tail_classes)} {tail_share:.1%} of images",
            transform=ax.transAxes,
            ha="right",
            fontsize=9,
        )
    return fig


def _tail(text: str, n: int) -> str:
    """Long class names keep their end, where product codes differ (SKU-10023-MUG vs SKU-10023-CUP)."""
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def _classes(n: int) -> str:
    return "class holds" if n == 1 else f"{n:,} classes hold"


def image_sizes(widths: np.ndarray, heights: np.ndarray) -> bytes:
    return to_png(image_sizes_figure(widths, heights))


def image_sizes_figure(widths: np.ndarray, heights: np.ndarray) -> Figure:
    """Histograms of width, height (whole pixels: ticks only at whole numbers, one bar per size when there are
    few sizes) and aspect ratio (width / height, log scale)."""
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3)
    if len(widths) == 0:
        for ax in axes:
            ax.text(0.5, 0.5, "no readable image", ha="center", va="center", transform=ax.transAxes)
        return fig
    for ax, values, name in ((axes[0], widths, "width (px)"), (axes[1], heights, "height (px)")):
        sizes, counts = np.unique(values, return_counts=True)
        if len(sizes) <= 12:  # a few sizes (often one): a bar each, named exactly
            ax.bar(np.arange(len(sizes)), counts, color=CLEAN, width=0.6)
            ax.set_xticks(np.arange(len(sizes)), [f"{int(v):,}" for v in sizes])
            ax.set_xlim(-0.8, len(sizes) - 0.2)
        else:
            ax.hist(values, bins=_bins(values), color=CLEAN)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(name)
        ax.set_ylabel("images")
    aspect = widths / np.maximum(heights, 1)
    axes[2].hist(aspect, bins=np.geomspace(max(aspect.min(), 1e-3) * 0.95, aspect.max() * 1.05 + 1e-9, 40), color=CLEAN)
    axes[2].set_xscale("log")
    lo, hi = axes[2].get_xlim()
    ticks = [t for t in (0.1, 0.25, 1 / 3, 0.5, 0.75, 1, 4 / 3, 2, 3, 4, 10) if lo <= t <= hi] or [1]
    axes[2].xaxis.set_minor_locator(NullLocator())
    axes[2].set_xticks(ticks, [f"{t:.2g}" for t in ticks])
    axes[2].axvline(1.0, color=MARK, linewidth=0.8, linestyle="--")
    axes[2].set_xlabel("aspect ratio w/h (log)")
    fig.suptitle(f"Image sizes from headers ({len(widths):,} images)")
    return fig


def _bins(values: np.ndarray) -> np.ndarray | int:
    lo, hi = float(values.min()), float(values.max())
    return np.linspace(lo - 0.5, hi + 0.5, 2) if lo == hi else 40


def loss_histogram(losses: np.ndarray, noisy: np.ndarray | None, thresholds: list[tuple[str, float]]) -> bytes:
    """Average-loss histogram, split into correct / wrong given labels when the truth is known, thresholds marked."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    if len(losses) == 0:
        ax.text(0.5, 0.5, "empty loss table", ha="center", va="center", transform=ax.transAxes)
        return to_png(fig)
    hi = max(float(losses.max()), *(t for _, t in thresholds)) if thresholds else float(losses.max())
    bins = np.linspace(min(0.0, float(losses.min())), hi * 1.02 + 1e-6, 60)
    if noisy is None:
        ax.hist(losses, bins=bins, color=CLEAN, label=f"all samples ({len(losses):,})")
    else:
        for mask, colour, name in ((~noisy, CLEAN, "label correct"), (noisy, NOISY, "label wrong")):
            ax.hist(losses[mask], bins=bins, color=colour, alpha=0.45, label=f"{name} ({int(mask.sum()):,})")
            ax.hist(losses[mask], bins=bins, color=colour, histtype="step", linewidth=1.2)
    for name, value in thresholds:
        ax.axvline(value, color=MARK, linestyle="--", linewidth=1.2)
        ax.text(
            value,
            0.97,
            f"{name} = {value:.3g} ",
            transform=ax.get_xaxis_transform(),
            va="top",
            ha="right",
            rotation=90,
            fontsize=8,
        )  # along its line, clear of the legend
    ax.set_yscale("log")
    ax.set_xlabel("average training loss")
    ax.set_ylabel("samples (log)")
    ax.legend(loc="upper right", fontsize=8)
    return to_png(fig)


def learning_curves(curves: list[tuple[str, list[dict]]]) -> bytes:
    """Training loss and validation mean top-1 error per epoch, stages one after another."""
    fig = Figure(figsize=(10, 3.4))
    ax_loss, ax_err = fig.subplots(1, 2)
    start = 0
    for name, records in curves:
        epochs = [start + i + 1 for i in range(len(records))]
        for ax, key in ((ax_loss, "train_loss"), (ax_err, "val_mean_top1_error")):
            pts = [(e, r[key]) for e, r in zip(epochs, records, strict=True) if isinstance(r.get(key), int | float)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=name)
        if start:
            for ax in (ax_loss, ax_err):
                ax.axvline(start + 0.5, color="#bbbbbb", linewidth=0.8)
        start += len(records)
    ax_loss.set_title("training loss")
    ax_err.set_title("validation mean top-1 error")
    for ax in (ax_loss, ax_err):
        ax.set_xlabel("epoch (stages in run order)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
    return to_png(fig)
