"""Stage 2 on files: read a loss table, run the pure selection, write the selected manifest and a per-class
summary, and score the selection when the true labels are known (purity, how well the loss ranks the noise)."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossguided.data.manifest import DataError
from lossguided.io import atomic_path, safe_cell, write_json
from lossguided.layout import csv_path
from lossguided.losstable import LossTable
from lossguided.metrics import auroc
from lossguided.refine.select import select, union
from lossguided.refine.threshold import agreeing_mask, confident_other_mask, estimate_drop_threshold

log = logging.getLogger("lossguided")


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


DROP_RULES = ("auto", "hybrid")  # the named values of drop_loss_above besides a number or None


@dataclass(frozen=True)
class DropDecision:
    """What the drop rules decided for every sample of one loss table, before ranking. It is computed once, by
    `drop_decision`, and read by the selection, the recipe and the report alike, so none re-derives a threshold.

    dropped [N] bool; limit [N] float64, the loss above which the sample goes (-inf: dropped by a prediction rule
    whatever its loss, +inf: no loss rule applies); lines: (name, nats) a histogram draws; per_class [K] (auto,
    hybrid) or None; info: the JSON-ready record (metrics.json, the stats file)."""

    dropped: np.ndarray
    limit: np.ndarray
    lines: list[tuple[str, float]]
    per_class: np.ndarray | None
    info: dict

    @property
    def any(self) -> bool:
        """Whether the config has any drop rule at all (else the report falls back to a quantile)."""
        return bool(self.lines) or self.per_class is not None or bool(self.info.get("dropped_first"))


def drop_decision(
    table: LossTable,
    *,
    drop_loss_above: float | str | None,
    drop_quantile: float | None = None,
    drop_disagreeing: bool = False,
    drop_confident_other: bool = False,
) -> DropDecision:
    """Apply the drop rules in their one order: the prediction rules first (`dropped_first`), then the loss rule on
    the rest (a number, 'auto' or 'hybrid'), then `drop_quantile`: the (1 - q) quantile of the losses the
    per-class rule left, or beside a fixed number of all the losses the prediction rules left.

    'hybrid': a class whose own losses show two modes is cut by its own mixture; every other class loses only what
    is confidently another class (never the global cut, which guts a clean class that is merely hard)."""
    losses = np.asarray(table.losses, dtype=np.float64)
    n, k = len(table), len(table.classes)
    limit = np.full(n, np.inf)
    lines: list[tuple[str, float]] = []
    per_class = None
    info: dict = {"drop_loss_above": drop_loss_above}
    first = dropped_first(table, drop_disagreeing=drop_disagreeing, drop_confident_other=drop_confident_other)
    stay = np.ones(n, dtype=bool) if first is None else ~first
    if first is not None:
        info["dropped_first"] = int(first.sum())
    if drop_loss_above in DROP_RULES:
        labels = table.labels
        hybrid = drop_loss_above == "hybrid"
        auto = estimate_drop_threshold(
            labels[stay],
            losses[stay],
            num_classes=k,
            **({"fallback": "none", "min_clean_share": 0.5} if hybrid else {}),
        )
        per_class = auto.per_class
        limit = per_class[labels].astype(np.float64)
        info |= auto.summary()
        finite = per_class[np.isfinite(per_class)]
        if finite.size:
            lines.append((f"{drop_loss_above}: median of per-class thresholds", float(np.median(finite))))
        if hybrid:
            confident = _confident_other(table)
            unimodal = ~auto.fitted_alone[labels]
            limit = np.where(unimodal & confident, -np.inf, limit)
            info["dropped_confident_other_unimodal"] = int((unimodal & confident & stay).sum())
            info["drop_threshold_method"] = (
                "hybrid: " + auto.method + "; classes without their own fit drop what is confidently another class"
            )
    elif isinstance(drop_loss_above, str):
        raise ValueError(f"drop_loss_above must be a number, one of {DROP_RULES} or None, got {drop_loss_above!r}")
    elif drop_loss_above is not None:
        if isinstance(drop_loss_above, bool) or not isinstance(drop_loss_above, int | float | np.number):
            raise ValueError(f"drop_loss_above must be a number, one of {DROP_RULES} or None, got {drop_loss_above!r}")
        if np.isnan(drop_loss_above):
            raise ValueError("drop_loss_above must be a number (losses above it are dropped) or None, got nan")
        limit[:] = float(drop_loss_above)
        lines.append(("drop_loss_above", float(drop_loss_above)))
    if drop_quantile is not None and not 0 <= drop_quantile < 1:
        raise ValueError(
            f"drop_quantile must be in [0, 1) (the top share by loss to drop) or None, got {drop_quantile!r}"
        )
    if drop_quantile:  # over what reaches the quantile: after a per-class rule, or every loss beside a fixed one
        staying = losses[stay & (losses <= limit)] if per_class is not None else losses[stay]
        if staying.size:
            q = float(np.quantile(staying, 1.0 - drop_quantile))
            limit = np.minimum(limit, q)
            lines.append((f"drop_quantile {drop_quantile:g}", q))
    limit = np.where(stay, limit, -np.inf)
    dropped = losses > limit
    info["dropped_by_rules"] = int(dropped.sum())
    return DropDecision(dropped, limit, lines, per_class, info)


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
    """`select_from_table` plus the drop decision's record (for the stats, metrics.json and the report): the drop
    rules of `drop_decision`, then the rank bands of `refine.select.select` over what stays. Raises ValueError
    when nothing would be selected, naming the rule that dropped everything."""
    decision = drop_decision(
        table,
        drop_loss_above=drop_loss_above,
        drop_quantile=drop_quantile,
        drop_disagreeing=drop_disagreeing,
        drop_confident_other=drop_confident_other,
    )
    keep = ~decision.dropped
    chosen = select(
        table.ids[keep],
        table.labels[keep],
        table.losses[keep],
        bands=tuple(bands),
        drop_loss_above=None,
        per_class=per_class,
    )
    ids = union(chosen)
    if len(table) and not len(ids):
        raise ValueError(
            f"the selection is empty: the drop rules removed all {len(table):,} samples "
            f"(drop_loss_above={drop_loss_above!r}, drop_quantile={drop_quantile!r}; the lowest loss is "
            f"{float(np.min(table.losses)):.4g})"
        )
    return ids, decision.info


RELABEL_MIN_P = 0.5  # a weak model's class thresholds are low: never relabel on less than an even bet


def relabel_candidates(table: LossTable, dropped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, new labels) of the dropped samples that are confidently another class: their recorded top-1 class is
    not their label and reaches that class's own threshold (its mean p over the samples labelled with it, as in
    confident learning) and at least RELABEL_MIN_P. Why: a look-alike filed under the wrong SKU is an image of the
    right one, and a rare class needs its images back more than the head needs them gone."""
    if table.p_label is None or table.top_classes is None:
        raise ValueError("relabelling needs the recorded top-5 (p_label, top_classes), which this loss table lacks")
    k = len(table.classes)
    counts = np.bincount(table.labels, minlength=k)
    mean_self = np.bincount(table.labels, weights=table.p_label.astype(np.float64), minlength=k)
    thresholds = np.where(counts > 0, mean_self / np.maximum(counts, 1), np.inf)
    top, p_top = table.top_classes[:, 0], table.top_probs[:, 0].astype(np.float64)
    ok = np.asarray(dropped) & (top >= 0) & (top != table.labels)
    ok &= p_top >= np.maximum(thresholds[np.clip(top, 0, k - 1)], RELABEL_MIN_P)
    return table.ids[ok], top[ok].astype(np.int64)


def _confident_other(table: LossTable) -> np.ndarray:
    if table.p_label is None or table.top_classes is None:
        raise ValueError(
            "this rule needs the recorded probabilities (p_label and top-5), which this loss table lacks: record it "
            "again with this version"
        )
    return confident_other_mask(
        table.labels, table.losses, table.p_label, table.top_classes, table.top_probs, num_classes=len(table.classes)
    )


def dropped_first(
    table: LossTable, *, drop_disagreeing: bool = False, drop_confident_other: bool = False
) -> np.ndarray | None:
    """[N] bool: the samples the prediction rules drop before any loss threshold (None when neither is on)."""
    if not (drop_disagreeing or drop_confident_other):
        return None
    drop = np.zeros(len(table), dtype=bool)
    if drop_disagreeing:
        drop |= ~agreeing_mask(table.labels, table.losses, table.preds)
    if drop_confident_other:
        drop |= _confident_other(table)
    return drop


def write_selection(
    table: LossTable, selected_ids: np.ndarray, out_csv: str | os.PathLike, *, labels: np.ndarray | None = None
) -> dict:
    """Write `id,path,label` of the selection and `<out>.summary.csv` (class, available, selected); `labels` [M]
    (class indices, in `selected_ids`' order) replaces the table's labels, for relabelled samples."""
    out_csv = Path(out_csv)
    pos = np.searchsorted(table.ids, selected_ids)
    chosen_labels = table.labels[pos] if labels is None else np.asarray(labels)
    names = np.array([safe_cell(n) for n in table.classes.names], dtype=object)  # no cell a spreadsheet runs
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label"])
        paths = [csv_path(p) for p in table.paths[pos]]  # absolute: the CSV reads back from any folder
        w.writerows(zip(table.ids[pos].tolist(), paths, names[chosen_labels], strict=True))
    k = len(table.classes)
    available = np.bincount(table.labels, minlength=k)
    chosen = np.bincount(chosen_labels, minlength=k)
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
    strict: bool = False,
) -> dict:
    """`lossguided select`: loss table in, selected manifest + per-class summary + stats JSON out. The selection's
    warnings (refine/warnings.py) are in the stats and logged; `strict` makes them an error before anything is
    written."""
    from lossguided.refine.warnings import selection_warnings

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
    second = _confident_other(table) if table.p_label is not None and table.top_classes is not None else None
    warnings = selection_warnings(table, ids, info, confident_other=second)
    if strict and warnings:
        raise DataError(
            f"{losses_path}: --strict: {warnings[0]}"
            + (f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else "")
        )
    for w in warnings:
        log.warning("select: %s", w)
    files = write_selection(table, ids, out_csv)
    stats = selection_stats(table, ids) | info | files | {"warnings": warnings}
    write_json(Path(out_csv).with_suffix(".stats.json"), stats)
    return stats
