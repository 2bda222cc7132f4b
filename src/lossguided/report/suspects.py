"""Suspected wrong labels and the way back: `lossguided suspects` ranks a loss table's samples by loss (highest
first: the likeliest wrong labels) into a CSV with an empty `corrected_label` column; a person fills it in (a class
name to relabel, `DROP` to remove, empty to keep) and `lossguided relabel` applies it to the manifest, writing a new
`id,path,label` manifest for `--train`."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from lossguided.data.manifest import DataError, Manifest
from lossguided.io import atomic_path, safe_cell, unsafe_cell
from lossguided.layout import csv_path
from lossguided.losstable import LossTable

DROP = "DROP"
SUSPECT_COLUMNS = ["rank", "id", "path", "label", "predicted", "loss", "rank_in_class", "class_size"]


def rank_in_class(ids: np.ndarray, labels: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """1-based rank of each sample inside its class by loss, highest first (ties: smaller id first)."""
    n = len(ids)
    order = np.lexsort((ids, -np.asarray(losses, dtype=np.float64), labels))
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if n else np.empty(0, dtype=np.int64)
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n) - first + 1
    return ranks


def rank_suspects(
    ids: np.ndarray, labels: np.ndarray, losses: np.ndarray, *, per_class: int | None = None, top: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the suspects, highest loss first (ties: smaller id), at most `per_class` per class and `top`
    in all; and every sample's rank inside its class."""
    for name, v in (("per_class", per_class), ("top", top)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    ranks = rank_in_class(ids, labels, losses)
    pos = np.flatnonzero(ranks <= per_class) if per_class else np.arange(len(ids))
    pos = pos[np.lexsort((ids[pos], -np.asarray(losses, dtype=np.float64)[pos]))]
    return (pos[:top] if top else pos), ranks


def write_suspects(
    table: LossTable, out_csv: str | os.PathLike, *, per_class: int | None = None, top: int | None = None
) -> dict:
    """Write the ranked suspects: rank, id, path (absolute, as in every CSV the tool writes), label, predicted, loss,
    rank_in_class, class_size[, true_label], corrected_label (empty, for a person to fill in)."""
    pos, ranks = rank_suspects(table.ids, table.labels, table.losses, per_class=per_class, top=top)
    names = np.array(table.classes.names, dtype=object)
    sizes = np.bincount(table.labels, minlength=len(names))
    truth = table.true_labels
    header = SUSPECT_COLUMNS + (["true_label"] if truth is not None else []) + ["corrected_label"]
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r, p in enumerate(pos, 1):
            row = [
                r,
                int(table.ids[p]),
                csv_path(table.paths[p]),
                names[table.labels[p]],
                names[table.preds[p]],
                f"{float(table.losses[p]):.6g}",
                int(ranks[p]),
                int(sizes[table.labels[p]]),
            ]
            row += ([names[truth[p]]] if truth is not None else []) + [""]
            w.writerow([safe_cell(c) for c in row])  # no cell a spreadsheet runs; read_corrections undoes it
    out = {"out": str(out_csv), "suspects": int(len(pos)), "of": int(len(table))}
    if truth is not None and len(pos):
        out["wrong_label_share_among_suspects"] = float((table.labels[pos] != truth[pos]).mean())
    return out


# -- relabel ----------------------------------------------------------------------------------------------------
def read_corrections(path: str | os.PathLike) -> dict[int, tuple[int, str, str | None, str | None]]:
    """id -> (CSV row, corrected label or '' or DROP, the label the file says the sample had, if it has `label`,
    the sample's path, if it has `path`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corrections file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "corrected_label") if c not in header]
        if missing:
            raise DataError(
                f"{path}: row 1: missing column(s) {missing}; expected the CSV written by "
                "`lossguided suspects` with its corrected_label column filled in"
            )
        out: dict[int, tuple[int, str, str | None]] = {}
        for row, rec in enumerate(reader, start=2):
            try:
                sample_id = int((rec.get("id") or "").strip())
            except ValueError:
                raise DataError(f"{path}: row {row}: id {rec.get('id')!r} is not an integer") from None
            if sample_id in out:
                raise DataError(f"{path}: row {row}: id {sample_id} again (first on row {out[sample_id][0]})")
            given = rec.get("label")
            corrected = unsafe_cell((rec.get("corrected_label") or "").strip())
            where = (rec.get("path") or "").strip()
            out[sample_id] = (row, corrected, unsafe_cell(given.strip()) if given else None, unsafe_cell(where) or None)
    return out


def _same_path(a: str, b: str) -> bool:
    """The same file, however the two CSVs spell it (relative to different folders, or absolute)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def relabel_manifest(
    manifest: Manifest,
    corrections_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    allow_new_labels: bool = False,
) -> dict:
    """Apply the corrections to `manifest` and write `id,path,label` (absolute paths) to `out_csv`.

    Errors name the corrections file and row: an id the manifest lacks, a label that is not a class (unless
    `allow_new_labels`), a `label` column that disagrees with the manifest (corrections made for another one).
    In-memory images (the built-in data) are written as PNG files beside `out_csv`, so `--train` can read them.
    """
    corrections = read_corrections(corrections_csv)
    names = list(manifest.classes.names)
    known = set(names)
    label_names = np.array(names, dtype=object)[manifest.labels]
    pos_of = {int(i): p for p, i in enumerate(manifest.ids)}
    keep = np.ones(len(manifest), dtype=bool)
    relabelled, new_classes = 0, set()
    paths = manifest.paths
    for sample_id, (row, corrected, given, where) in corrections.items():
        p = pos_of.get(sample_id)
        if p is None:
            raise DataError(f"{corrections_csv}: row {row}: id {sample_id} is not in {manifest.source}")
        if where is not None and paths is not None and not _same_path(where, paths[p]):
            raise DataError(
                f"{corrections_csv}: row {row}: id {sample_id} is {paths[p]} in {manifest.source}, not {where}: "
                "corrections made for another manifest (rows reordered?)"
            )
        if given is not None and given != label_names[p]:
            raise DataError(
                f"{corrections_csv}: row {row}: id {sample_id} has label {label_names[p]!r} in "
                f"{manifest.source}, not {given!r}: corrections made for another manifest?"
            )
        if not corrected:
            continue
        if corrected == DROP:
            keep[p] = False
            continue
        if corrected not in known:
            if not allow_new_labels:
                raise DataError(
                    f"{corrections_csv}: row {row}: corrected_label {corrected!r} is not a class of "
                    f"{manifest.source} (a typo? --allow-new-labels creates it)"
                )
            new_classes.add(corrected)
        if corrected != label_names[p]:
            label_names[p] = corrected
            relabelled += 1
    if not keep.any():
        raise DataError(f"{corrections_csv}: every sample is dropped; nothing would be left to train on")
    out_csv = Path(out_csv)
    paths = _paths_for_csv(manifest, keep, out_csv)
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label"])
        w.writerows(zip(manifest.ids[keep].tolist(), paths, label_names[keep], strict=True))
    remaining = set(label_names[keep])
    return {
        "out": str(out_csv),
        "samples": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "relabelled": relabelled,
        "classes": len(remaining),
        "new_classes": sorted(new_classes),
        "emptied_classes": sorted(known - remaining),
    }


def _paths_for_csv(manifest: Manifest, keep: np.ndarray, out_csv: Path) -> list[str]:
    if manifest.paths is not None:
        return [csv_path(p) for p in manifest.paths[keep]]
    from PIL import Image

    folder = out_csv.with_name(out_csv.stem + "_images")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in zip(manifest.ids[keep], manifest.images[keep], strict=True):
        target = folder / f"{int(i)}.png"
        if not target.is_file():
            Image.fromarray(np.ascontiguousarray(pixels)).save(target)
        paths.append(str(target.resolve()))
    return paths
