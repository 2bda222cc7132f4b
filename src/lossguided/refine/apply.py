"""Stage 2 on files: read a loss table, run the pure selection, write the selected manifest and a per-class
summary, and score the selection when the true labels are known (purity, how well the loss ranks the noise)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from lossguided.data.manifest import DataError
from lossguided.io import atomic_path, safe_cell, write_json
from lossguided.layout import csv_path
from lossguided.losstable import LossTable
from lossguided.metrics import auroc
from lossguided.refine.select import select, union
from lossguided.refine.threshold import agreeing_mask, confident_other_mask, estimate_drop_threshold


def selection_stats(table: LossTable, selected_ids: np.ndarray) -> dict:
    """Size, classes covered and, where the truth is known, purity of the selection and the loss's noise AUROC."""
    pos = np.searchsorted(table.ids, selected_ids)
    stats = {
        "selected": int(len(selected_ids)),
        "of": int(len(table)),
        "classes_covered": int(len(np.unique(table.labels[pos]))),
    }
    noisy = table.is_noisy
    if noisy is not None:
        stats["purity"] = float(1.0 - noisy[pos].mean()) if len(pos) else float("nan")
        stats["train_noise_rate"] = float(noisy.mean())
        stats["loss_auroc"] = auroc(table.losses, noisy)
    return stats


def select_from_table(table: LossTable, **options) -> np.ndarray:
    """Sorted ids of the union of `bands`; the options are `select_with_info`'s (one list of them, kept there)."""
    return select_with_info(table, **options)[0]


def select_with_info(
    table: LossTable,
    *,
    bands: list[str] | tuple[str, ...],
    drop_loss_above: float | str | None,
    drop_quantile: float | None,
    per_class: int | None,
    drop_disagreeing: bool = False,
    drop_confident_other: bool = False,
) -> tuple[np.ndarray, dict]:
    """`select_from_table` plus how the drop threshold was found (for the stats, metrics.json and the report).
    `drop_disagreeing` also drops samples the model assigned to another class, `drop_confident_other` those that
    are confidently another class (refine/threshold.py); each class keeps its 5 lowest losses."""
    ids, labels, losses = table.ids, table.labels, table.losses
    info: dict = {"drop_loss_above": drop_loss_above}
    first = dropped_first(table, drop_disagreeing=drop_disagreeing, drop_confident_other=drop_confident_other)
    if first is not None:
        ids, labels, losses = ids[~first], labels[~first], losses[~first]
        info["dropped_first"] = int(first.sum())
    if drop_loss_above == "auto":
        auto = estimate_drop_threshold(labels, losses, num_classes=len(table.classes))
        keep = auto.keep_mask(labels, losses)
        ids, labels, losses = ids[keep], labels[keep], losses[keep]
        info |= auto.summary()
        drop_loss_above = None
    elif isinstance(drop_loss_above, str):
        raise ValueError(f"drop_loss_above must be a number, 'auto' or None, got {drop_loss_above!r}")
    chosen = select(
        ids,
        labels,
        losses,
        bands=tuple(bands),
        drop_loss_above=drop_loss_above,
        drop_quantile=drop_quantile,
        per_class=per_class,
    )
    return union(chosen), info


def dropped_first(
    table: LossTable, *, drop_disagreeing: bool = False, drop_confident_other: bool = False
) -> np.ndarray | None:
    """[N] bool: the samples the prediction rules drop before any loss threshold (None when neither is on); the
    report marks the same ones."""
    if not (drop_disagreeing or drop_confident_other):
        return None
    drop = np.zeros(len(table), dtype=bool)
    if drop_disagreeing:
        drop |= ~agreeing_mask(table.labels, table.losses, table.preds)
    if drop_confident_other:
        if table.p_label is None or table.top_classes is None:
            raise ValueError(
                "drop_confident_other needs the recorded probabilities (p_label and top-5), which this loss table "
                "lacks: record it again with this version"
            )
        drop |= confident_other_mask(
            table.labels,
            table.losses,
            table.p_label,
            table.top_classes,
            table.top_probs,
            num_classes=len(table.classes),
        )
    return drop


def write_selection(table: LossTable, selected_ids: np.ndarray, out_csv: str | os.PathLike) -> dict:
    """Write `id,path,label` of the selection and `<out>.summary.csv` (class, available, selected)."""
    out_csv = Path(out_csv)
    pos = np.searchsorted(table.ids, selected_ids)
    names = np.array([safe_cell(n) for n in table.classes.names], dtype=object)  # no cell a spreadsheet runs
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label"])
        paths = [csv_path(p) for p in table.paths[pos]]  # absolute: the CSV reads back from any folder
        w.writerows(zip(table.ids[pos].tolist(), paths, names[table.labels[pos]], strict=True))
    k = len(table.classes)
    available = np.bincount(table.labels, minlength=k)
    chosen = np.bincount(table.labels[pos], minlength=k)
    summary_path = out_csv.with_suffix(".summary.csv")
    with atomic_path(summary_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "available", "selected"])
        w.writerows(zip(names.tolist(), available.tolist(), chosen.tolist(), strict=True))
    return {"manifest": str(out_csv), "summary": str(summary_path)}


def select_to_manifest(
    losses_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    bands: list[str],
    drop_loss_above: float | str | None = 9.0,
    drop_quantile: float | None = None,
    per_class: int | None = None,
    drop_disagreeing: bool = False,
    drop_confident_other: bool = False,
) -> dict:
    """`lossguided select`: loss table in, selected manifest + per-class summary + stats JSON out."""
    table = LossTable.load(losses_path)
    try:
        ids, info = select_with_info(
            table,
            bands=bands,
            drop_loss_above=drop_loss_above,
            drop_quantile=drop_quantile,
            per_class=per_class,
            drop_disagreeing=drop_disagreeing,
            drop_confident_other=drop_confident_other,
        )
    except ValueError as e:
        raise DataError(f"{losses_path}: {e}") from None
    files = write_selection(table, ids, out_csv)
    stats = selection_stats(table, ids) | info | files
    write_json(Path(out_csv).with_suffix(".stats.json"), stats)
    return stats
