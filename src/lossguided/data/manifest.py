"""Manifests: the list of samples (stable integer id, image source, label) and the class map that names labels.

A manifest comes from a CSV (`path,label[,id]`, paths relative to the CSV), an ImageFolder tree
(`root/<class>/<image>`) or a built-in dataset whose images live in memory. Every problem is reported as one
line naming the file and row, before any training starts.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lossguided.data.csvread import CsvError, mark_checked, read_columns, was_checked
from lossguided.data.errors import DataError
from lossguided.data.storage import Storage
from lossguided.data.strings import StringColumn, range_hashes
from lossguided.io import unsafe_cell

CHECK_CHUNK = 1 << 18  # rows per step of the existence check
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ClassMap:
    """Class index <-> name. Integer labels sort numerically, string labels (SKU codes) lexically: stable."""

    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> ClassMap:
        return cls.from_names({str(x) for x in labels})

    @classmethod
    def from_names(cls, names: Sequence[str] | set[str]) -> ClassMap:
        """From the distinct label names: sorted, numerically when all are integers."""
        unique = sorted(set(names))
        if all(_is_int(x) for x in unique):
            unique.sort(key=int)
        return cls(tuple(unique))

    def __len__(self) -> int:
        return len(self.names)

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def index_of(self, names: Sequence[str]) -> np.ndarray:
        """Class index of each name [len(names)] int64; -1 where a name is not in the map."""
        index = self._index
        return np.fromiter((index.get(str(x), -1) for x in names), dtype=np.int64, count=len(names))

    def encode(self, labels: np.ndarray, *, source: str = "<labels>", rows: np.ndarray | None = None) -> np.ndarray:
        """Label names -> indices [N]; an unknown name is an error naming the file and row. Each distinct name is
        looked up once (one `np.unique`), not each row."""
        labels = np.asarray(labels, dtype=object)
        if len(labels) == 0:
            return np.zeros(0, dtype=np.int64)
        uniq, codes = np.unique(labels.astype(str), return_inverse=True)
        return self.encode_codes(uniq.tolist(), codes.ravel(), source=source, rows=rows)

    def encode_codes(
        self, names: Sequence[str], codes: np.ndarray, *, source: str = "<labels>", rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Dictionary-encoded labels (row i has label `names[codes[i]]`) -> class indices [N] int64."""
        mapped = self.index_of(names)
        out = mapped[codes]
        bad = np.flatnonzero(out < 0)
        if len(bad):
            i = int(bad[0])
            row = rows[i] if rows is not None else i
            raise DataError(
                f"{source}: row {row}: label {names[codes[i]]!r} is not in the class map ({len(self)} classes)"
            )
        return out


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


@dataclass
class Manifest:
    """Samples of one split: ids, labels, and the `storage` that holds their pixels (`data.storage`: image files,
    in-memory arrays, a preprocessed folder or WebDataset shards); `data.sources` reads a manifest by its storage's
    kind. `paths` and `images` are read-only views of the storage: the per-row names (a `StringColumn`: one byte
    buffer + offsets, see `data.strings`; the original paths or `<shard>.tar#<key>` for stored data, which need not
    exist as files) and the in-memory uint8 images [N,H,W] or [N,H,W,3].

    `true_labels` is known only for benchmarks made noisy on purpose; it is used to score noise detection.
    `digest` is the SHA-256 of the CSV these exact rows were read from (None otherwise, and for a subset): a key for
    caching what was checked about them (e.g. every image decodes) without a stat per image.
    """

    ids: np.ndarray
    labels: np.ndarray
    classes: ClassMap
    source: str
    storage: Storage
    true_labels: np.ndarray | None = None
    rows: np.ndarray | None = field(default=None, repr=False)
    digest: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def paths(self) -> StringColumn | None:
        """Per-row names (file paths, or names of stored samples); None for in-memory images."""
        return self.storage.names

    @property
    def images(self) -> np.ndarray | None:
        """In-memory uint8 images [N,H,W] or [N,H,W,3]; None for every other storage."""
        return self.storage.images

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not isinstance(self.storage, Storage):
            raise DataError(f"{self.source}: storage must be a Storage, not {type(self.storage).__name__}")
        names = self.storage.names
        if names is not None and not isinstance(names, StringColumn):
            try:
                self.storage = replace(self.storage, names=StringColumn.from_strings(names))
            except ValueError as e:
                raise DataError(f"{self.source}: path {e}") from None
        n = len(self.ids)
        for name, value in (("labels", self.labels), ("true_labels", self.true_labels)):
            if value is not None and len(value) != n:
                raise DataError(f"{self.source}: {name} has {len(value)} rows, ids has {n}")
        if len(self.storage) != n:
            raise DataError(f"{self.source}: {self.storage.kind} storage has {len(self.storage)} rows, ids has {n}")
        _check_unique_ids(self.ids, self.source, self.rows)

    def subset(self, index: np.ndarray) -> Manifest:
        """Rows `index` (positions, not ids) as a new manifest sharing the class map and storage root."""
        return Manifest(
            ids=self.ids[index],
            labels=self.labels[index],
            classes=self.classes,
            source=self.source,
            storage=self.storage.take(index),
            true_labels=None if self.true_labels is None else self.true_labels[index],
            rows=None if self.rows is None else self.rows[index],
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
        names = self.classes.names
        labels = classes.encode_codes(names, self.labels, source=self.source, rows=self.rows)
        true = None if self.true_labels is None else classes.encode_codes(names, self.true_labels, source=self.source)
        return Manifest(
            ids=self.ids,
            labels=labels,
            classes=classes,
            source=self.source,
            storage=self.storage,
            true_labels=true,
            rows=self.rows,
            digest=self.digest,
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
    member_markers: tuple[str, ...] = (),
    cache_dir: str | os.PathLike | None = None,
) -> Manifest:
    """Read `path,label[,id]` (header required). Rows are numbered as a spreadsheet shows them (header = row 1).

    Without `id`, a sample's id is its 0-based data row number. Without `classes`, the class map comes from the labels.
    Paths starting with one of `builtin_prefixes` name a built-in dataset's image (`fashion-mnist:train#123`) and
    are kept as written, for the caller to resolve. Paths containing one of `member_markers` (`.tar#`) name a sample
    inside an archive (`<shard>.tar#<key>`): resolved relative to the CSV like files, but not checked as files (the
    caller reads them). The columns are read in bulk and cached by the CSV's content hash
    (`data.csvread`); with `check_files`, every image's existence is checked once per CSV content and folder (one
    listing per image folder, in parallel), and the cache remembers that it passed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        cols = read_columns(path, cache_dir=cache_dir)
    except CsvError as e:
        raise DataError(str(e)) from None
    if not len(cols):
        raise DataError(f"{path}: no samples")
    rows = np.arange(2, len(cols) + 2)
    names = [unsafe_cell(n) for n in cols.label_names]  # a label we wrote spreadsheet-safe ('=x) reads back as =x
    classes = classes or ClassMap.from_names(names)
    labels = classes.encode_codes(names, cols.label_codes, source=str(path), rows=rows)
    paths, is_file = _resolve(cols.paths, path.parent, builtin_prefixes)
    for marker in member_markers:
        is_file &= ~paths.contains(marker)
    if check_files:
        key = f"files-exist:{os.path.abspath(path.parent)}"
        if not was_checked(cols.cache, key):
            check_files_exist(paths, is_file, source=str(path), rows=rows)
            mark_checked(cols.cache, key)
    return Manifest(
        ids=cols.ids if cols.ids is not None else rows - 2,
        labels=labels,
        classes=classes,
        source=str(path),
        storage=Storage.files(paths),
        rows=rows,
        digest=cols.digest,
    )


def _resolve(raw: StringColumn, root: Path, builtin_prefixes: tuple[str, ...]) -> tuple[StringColumn, np.ndarray]:
    """Paths relative to the CSV's folder, as a column with that folder as its prefix (stored once), and which rows
    are files (not built-in names). Absolute paths and built-in names are kept as written."""
    builtin = raw.startswith_any(builtin_prefixes) if builtin_prefixes else np.zeros(len(raw), dtype=bool)
    absolute = raw.startswith_any((os.sep,))
    prefix = "" if str(root) == "." else str(root) + os.sep
    if not prefix or not (builtin | absolute).any():
        return StringColumn(raw.buffer, raw.offsets, prefix), ~builtin
    keep = builtin | absolute
    return StringColumn.from_strings([p if k else prefix + p for p, k in zip(raw, keep, strict=True)]), ~builtin


def check_files_exist(
    paths: StringColumn, which: np.ndarray | None = None, *, source: str, rows: np.ndarray, threads: int = 16
) -> None:
    """Every path (where `which` is True) names a file: one directory listing per folder, listed in parallel, in place
    of one stat per image; the (folder, name) pairs are compared as 64-bit hashes, vectorized. The first missing
    file is an error naming its row."""
    buf, starts, ends = paths.buffer, paths.offsets[:-1], paths.offsets[1:]
    n = len(paths)
    keys = np.empty(n, np.uint64)  # (folder, name) of every row
    reps: list[tuple[np.ndarray, ...]] = []  # (folder hash, row, folder end, has separator) of each chunk's folders
    for a in range(0, n, CHECK_CHUNK):  # chunks of rows: the temporaries stay small
        b = min(n, a + CHECK_CHUNK)
        s, e = starts[a:b], ends[a:b]
        seps = np.flatnonzero(buf[s[0] : e[-1]] == ord(os.sep)) + s[0]
        last = np.searchsorted(seps, e) - 1  # the item's last separator, if it lies inside the item
        at = seps[np.maximum(last, 0)] if len(seps) else s
        has = (last >= 0) & (at >= s)
        dir_end = np.where(has, at, s)
        dir_hash = range_hashes(buf, s, dir_end) ^ has.astype(np.uint64)  # "x.jpg" and "/x.jpg" differ
        keys[a:b] = _pair_keys(dir_hash, range_hashes(buf, np.where(has, at + 1, s), e))
        u, f = np.unique(dir_hash, return_index=True)
        reps.append((u, f + a, dir_end[f], has[f]))
    u, f_row, f_end, f_has = (np.concatenate(c) for c in zip(*reps, strict=True))
    folder_hash, pick = np.unique(u, return_index=True)
    folders = [
        _folder(paths.prefix, buf[starts[i] : end].tobytes(), bool(h))
        for i, end, h in zip(f_row[pick], f_end[pick], f_has[pick], strict=True)
    ]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        listings = list(pool.map(_file_names, folders))
    counts = np.array([c for _, c in listings], dtype=np.int64)
    blob = np.frombuffer(b"".join(b for b, _ in listings), dtype=np.uint8)  # names, each followed by NUL
    cuts = np.flatnonzero(blob == 0)
    name_starts = np.concatenate([np.zeros(1, np.int64), cuts[:-1] + 1]) if len(cuts) else cuts
    listed = np.unique(_pair_keys(np.repeat(folder_hash, counts), range_hashes(blob, name_starts, cuts)))
    del blob, cuts, name_starts
    for a in range(0, n, CHECK_CHUNK):
        k = keys[a : a + CHECK_CHUNK]
        found = listed[np.minimum(np.searchsorted(listed, k), max(len(listed) - 1, 0))] == k if len(listed) else k != k
        missing = np.flatnonzero(~found if which is None else ~found & which[a : a + CHECK_CHUNK])
        if len(missing):
            i = a + int(missing[0])
            p = paths[i]
            p = p if len(p) <= 300 else f"{p[:150]}...({len(p)} characters)...{p[-100:]}"
            raise DataError(f"{source}: row {rows[i]}: image not found: {p}")


def _pair_keys(folder: np.ndarray, name: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return folder * np.uint64(0xFF51AFD7ED558CCD) ^ name


def _folder(prefix: str, raw: bytes, has_sep: bool) -> str:
    """The folder of a path `prefix + raw + sep + name` (or `prefix + name` without a separator in raw)."""
    if not has_sep:
        return prefix[:-1] or os.sep if prefix else "."
    return prefix + (raw.decode("utf-8", errors="surrogateescape") or os.sep)


def _file_names(folder: str) -> tuple[bytes, int]:
    """The names of the files in `folder`, each followed by a NUL byte, and how many; none when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_file()]
    except OSError:
        return b"", 0
    return b"".join(os.fsencode(n) + b"\0" for n in names), len(names)


def one_line_message(e: Exception) -> str:
    """Our error's own line: one raised in a DataLoader worker arrives with the worker's traceback around it."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(("lossguided.", "DataError", "ConfigError")) else last


def check_confined(manifest: Manifest) -> None:
    """Every image path of a file manifest lies inside the manifest's own folder (the CSV's folder, the ImageFolder
    root) once links and `..` are resolved; else one line naming the file, row and path. For data from people one
    does not trust: by default a CSV may name any readable file (absolute paths and `../` included)."""
    if manifest.storage.kind != "files" or not manifest.source or ":" in manifest.source.split("/")[0]:
        return  # in-memory or stored data (preprocessed, shards: paths are names, not read): no files
    src = Path(manifest.source)
    root = os.path.realpath(src.parent if src.is_file() else src)
    rows = manifest.rows if manifest.rows is not None else np.arange(len(manifest)) + 2
    for i, p in enumerate(manifest.paths):
        real = os.path.realpath(p)
        if real != root and not real.startswith(root + os.sep):
            raise DataError(f"{manifest.source}: row {rows[i]}: image {p} lies outside {root} (data.confine_paths)")


def read_image_folder(root: str | os.PathLike, *, classes: ClassMap | None = None) -> Manifest:
    """`root/<class>/<image>`; ids number the files in sorted (class, file) order, so they are stable. Hidden
    folders and files (a leading '.', e.g. `.ipynb_checkpoints`, `.DS_Store`) are not classes or images. Folders are
    listed with `os.scandir` and the paths kept as `class/file` under the root stored once (no object per file)."""
    root = Path(root)
    with os.scandir(root) as it:
        class_names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise DataError(f"{root}: no class folders")
    names, counts = [], []
    for c in class_names:
        with os.scandir(root / c) as it:
            files = sorted(
                e.name
                for e in it
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and not e.name.startswith(".")
            )
        if not files:
            raise DataError(f"{root / c}: empty class folder (no images with extensions {IMAGE_EXTENSIONS})")
        names += [f"{c}{os.sep}{f}" for f in files]
        counts.append(len(files))
    classes = classes or ClassMap.from_names(class_names)
    labels = classes.encode_codes(class_names, np.repeat(np.arange(len(class_names)), counts), source=str(root))
    return Manifest(
        ids=np.arange(len(names)),
        labels=labels,
        classes=classes,
        source=str(root),
        storage=Storage.files(StringColumn.from_strings(names, prefix="" if str(root) == "." else str(root) + os.sep)),
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
