"""Manifests: the list of samples (stable integer id, image source, label) and the class map that names labels.

A manifest comes from a CSV (`path,label[,id]`, paths relative to the CSV), an ImageFolder tree
(`root/<class>/<image>`) or a built-in dataset whose images live in memory. Every problem is reported as one
line naming the file and row, before any training starts.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input data: the message names the file and row."""


@dataclass(frozen=True)
class ClassMap:
    """Class index <-> name. Integer labels sort numerically, string labels (SKU codes) lexically: stable."""

    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ClassMap:
        unique = sorted({str(x) for x in labels})
        if all(_is_int(x) for x in unique):
            unique.sort(key=int)
        return cls(tuple(unique))

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, labels: np.ndarray, *, source: str = "<labels>", rows: np.ndarray | None = None) -> np.ndarray:
        """Label names -> indices [N]; an unknown name is an error naming the file and row."""
        index = {name: i for i, name in enumerate(self.names)}
        out = np.empty(len(labels), dtype=np.int64)
        for i, name in enumerate(labels):
            j = index.get(str(name))
            if j is None:
                row = rows[i] if rows is not None else i
                raise DataError(f"{source}: row {row}: label {name!r} is not in the class map ({len(self)} classes)")
            out[i] = j
        return out


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


@dataclass
class Manifest:
    """Samples of one split. `images` (uint8 [N,H,W] or [N,H,W,3]) replaces `paths` for in-memory datasets.

    `true_labels` is known only for benchmarks made noisy on purpose; it is used to score noise detection.
    `store` is a preprocessed folder (`lossguided preprocess`) that holds every sample's pixels by id; `paths` then
    name the original files (for people and loss tables), which need not exist any more.
    """

    ids: np.ndarray
    labels: np.ndarray
    classes: ClassMap
    source: str
    paths: np.ndarray | None = None
    images: np.ndarray | None = None
    true_labels: np.ndarray | None = None
    rows: np.ndarray | None = field(default=None, repr=False)
    store: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.ids)
        for name in ("labels", "paths", "images", "true_labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise DataError(f"{self.source}: {name} has {len(value)} rows, ids has {n}")
        if (self.paths is None) == (self.images is None):
            raise DataError(f"{self.source}: a manifest needs exactly one of paths or images")
        _check_unique_ids(self.ids, self.source, self.rows)

    def subset(self, index: np.ndarray) -> Manifest:
        """Rows `index` (positions, not ids) as a new manifest sharing the class map."""
        take = lambda a: None if a is None else a[index]  # noqa: E731
        return Manifest(
            ids=self.ids[index],
            labels=self.labels[index],
            classes=self.classes,
            source=self.source,
            paths=take(self.paths),
            images=take(self.images),
            true_labels=take(self.true_labels),
            rows=take(self.rows),
            store=self.store,
        )

    def select_ids(self, ids: np.ndarray) -> Manifest:
        """The rows whose id is in `ids`; an id that is not in the manifest is an error (nothing dropped silently)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids, ids, sorter=order)
        pos = np.minimum(pos, len(order) - 1)
        found = self.ids[order[pos]] == ids
        if not found.all():
            missing = ids[~found]
            raise DataError(f"{self.source}: {len(missing)} selected ids are not in the manifest, e.g. {missing[:5]}")
        return self.subset(np.sort(order[pos]))

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of `ids` (all must exist)."""
        order = np.argsort(self.ids, kind="stable")
        pos = order[np.searchsorted(self.ids, ids, sorter=order).clip(0, len(order) - 1)]
        if not np.array_equal(self.ids[pos], ids):
            raise DataError(f"{self.source}: some ids are not in the manifest")
        return pos

    def with_classes(self, classes: ClassMap) -> Manifest:
        """Re-encode labels through another class map (e.g. a checkpoint's); unknown labels are errors."""
        if classes == self.classes:
            return self
        names = np.array(self.classes.names, dtype=object)
        labels = classes.encode(names[self.labels], source=self.source, rows=self.rows)
        true = None if self.true_labels is None else classes.encode(names[self.true_labels], source=self.source)
        return Manifest(
            ids=self.ids,
            labels=labels,
            classes=classes,
            source=self.source,
            paths=self.paths,
            images=self.images,
            true_labels=true,
            rows=self.rows,
            store=self.store,
        )


def _check_unique_ids(ids: np.ndarray, source: str, rows: np.ndarray | None) -> None:
    if len(ids) == 0:
        return
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(dup):
        first, second = order[dup[0]], order[dup[0] + 1]
        r1, r2 = (rows[first], rows[second]) if rows is not None else (first, second)
        raise DataError(f"{source}: row {r2}: duplicate id {ids[second]} (also on row {r1})")


def read_csv(
    path: str | os.PathLike,
    *,
    classes: ClassMap | None = None,
    check_files: bool = True,
    builtin_prefixes: tuple[str, ...] = (),
) -> Manifest:
    """Read `path,label[,id]` (header required). Rows are numbered as a spreadsheet shows them (header = row 1).

    Without `id`, a sample's id is its 0-based data row number. Without `classes`, the class map comes from the labels.
    Paths starting with one of `builtin_prefixes` name a built-in dataset's image (`fashion-mnist:train#123`) and
    are kept as written, for the caller to resolve.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("path", "label") if c not in header]
        if missing:
            raise DataError(f"{path}: row 1: missing column(s) {missing}; the header must have path,label[,id]")
        records = list(reader)
    if not records:
        raise DataError(f"{path}: no samples")
    rows = np.arange(2, len(records) + 2)
    root = path.parent
    paths, labels, ids = [], [], []
    has_id = "id" in header
    for row, rec in zip(rows, records, strict=True):
        p, lab = (rec.get("path") or "").strip(), (rec.get("label") or "").strip()
        if not p:
            raise DataError(f"{path}: row {row}: empty path")
        if not lab:
            raise DataError(f"{path}: row {row}: empty label")
        if builtin_prefixes and p.startswith(builtin_prefixes):
            paths.append(p)
        else:
            full = Path(p) if os.path.isabs(p) else root / p
            if check_files and not full.is_file():
                raise DataError(f"{path}: row {row}: image not found: {full}")
            paths.append(str(full))
        labels.append(lab)
        if has_id:
            try:
                ids.append(int(rec["id"]))
            except (TypeError, ValueError):
                raise DataError(f"{path}: row {row}: id {rec.get('id')!r} is not an integer") from None
    label_arr = np.array(labels, dtype=object)
    classes = classes or ClassMap.from_labels(label_arr)
    return Manifest(
        ids=np.array(ids, dtype=np.int64) if has_id else rows - 2,
        labels=classes.encode(label_arr, source=str(path), rows=rows),
        classes=classes,
        source=str(path),
        paths=np.array(paths, dtype=object),
        rows=rows,
    )


def read_image_folder(root: str | os.PathLike, *, classes: ClassMap | None = None) -> Manifest:
    """`root/<class>/<image>`; ids number the files in sorted (class, file) order, so they are stable."""
    root = Path(root)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class folders")
    paths, labels = [], []
    for d in class_dirs:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{d}: empty class folder (no images with extensions {IMAGE_EXTENSIONS})")
        paths += [str(f) for f in files]
        labels += [d.name] * len(files)
    label_arr = np.array(labels, dtype=object)
    classes = classes or ClassMap.from_labels(label_arr)
    return Manifest(
        ids=np.arange(len(paths)),
        labels=classes.encode(label_arr, source=str(root)),
        classes=classes,
        source=str(root),
        paths=np.array(paths, dtype=object),
    )


def write_csv(manifest: Manifest, path: str | os.PathLike) -> None:
    """Write `id,path,label` (label names) atomically; in-memory images are written as `<source>#<id>`, which
    `load_manifest` reads back for the built-in dataset (`fashion-mnist:train#123`)."""
    from lossguided.io import atomic_path

    names = np.array(manifest.classes.names, dtype=object)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label"])
        paths = manifest.paths if manifest.paths is not None else [f"{manifest.source}#{i}" for i in manifest.ids]
        for i, p, lab in zip(manifest.ids, paths, names[manifest.labels], strict=True):
            w.writerow([int(i), p, lab])
