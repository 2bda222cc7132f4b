"""The per-sample loss table: one row per training sample, keyed by its id, in a columnar `.npz` file.

Columns: `id` int64, `label` (class index of the given, possibly wrong, label), `loss` float32 (the average over
`n_records` recorded epochs), `n_records`, `pred` (the model's class), the path, and `true_label` when the truth is
known (benchmarks). From the recorder, where it kept them (last recorded epoch): `p_label` float32, the probability
the model gave the given label, and `top_classes` [N, 5] / `top_probs` [N, 5] float16, its five most probable classes.
The class names are stored beside them.

Sized for 2.55M rows (under 100 MB with the top-5, `benchmarks/scale_sim.py`): paths are one UTF-8 byte buffer
with per-row lengths (and a common prefix stored once), ids are stored as their first value and the gaps between
them (ascending, so the gaps are small and deflate to almost nothing), class indices are uint16 where the class
count allows, `pred` is not stored where it is the top-1 class anyway, `p_label` is float16 on disk, and the file is
compressed. Tables written before that (`id` and `pred` whole, `path` as a fixed-width string column, `p_label`
float32) still load. In memory, ids are int64, class indices int64 (the top-5 int32), `p_label` float32 and paths a
`StringColumn`.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.strings import StringColumn
from lossguided.io import atomic_path

TOP_K = 5


@dataclass
class LossTable:
    ids: np.ndarray
    labels: np.ndarray
    losses: np.ndarray
    n_records: np.ndarray
    preds: np.ndarray
    paths: StringColumn
    classes: ClassMap
    true_labels: np.ndarray | None = None
    p_label: np.ndarray | None = None  # [N] float32
    top_classes: np.ndarray | None = None  # [N, TOP_K] int32 (-1 pads when K < TOP_K)
    top_probs: np.ndarray | None = None  # [N, TOP_K] float16

    def __post_init__(self) -> None:
        if not isinstance(self.paths, StringColumn):
            self.paths = StringColumn.from_strings(self.paths)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_recording(
        cls,
        manifest: Manifest,
        ids: np.ndarray,
        losses: np.ndarray,
        n_records: np.ndarray,
        preds: np.ndarray,
        p_label: np.ndarray | None = None,
        top_classes: np.ndarray | None = None,
        top_probs: np.ndarray | None = None,
    ) -> LossTable:
        """Join recorded per-id values (`LossRecorder.table()`, ids sorted) with the manifest."""
        pos = manifest.positions_of(ids)
        if manifest.paths is not None:
            paths = manifest.paths[pos]
        else:
            paths = StringColumn.from_strings([f"{manifest.source}#{i}" for i in ids])
        true = manifest.true_labels[pos] if manifest.true_labels is not None else None
        return cls(
            ids,
            manifest.labels[pos],
            losses,
            n_records,
            preds,
            paths,
            manifest.classes,
            true,
            p_label,
            top_classes,
            top_probs,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Compressed `.npz`, written atomically."""
        k = len(self.classes)
        index = np.uint16 if k <= np.iinfo(np.uint16).max else np.int32
        lengths = np.diff(self.paths.offsets)
        ids = np.asarray(self.ids, dtype=np.int64)
        gaps = np.diff(ids)
        cols = {
            "id_first": ids[:1],
            "id_gap": gaps.astype(_smallest_uint(gaps.max(initial=0))) if (gaps > 0).all() else gaps,
            "label": np.asarray(self.labels).astype(index),
            "loss": np.asarray(self.losses, dtype=np.float32),
            "n_records": np.asarray(self.n_records).astype(np.int32),
            "path_buffer": self.paths.buffer,
            "path_lengths": lengths.astype(np.uint16 if lengths.max(initial=0) <= 65535 else np.int64),
            "path_prefix": np.array(self.paths.prefix),
            "classes": np.array(self.classes.names, dtype=str),
        }
        if self.true_labels is not None:
            cols["true_label"] = np.asarray(self.true_labels).astype(index)
        if self.p_label is not None:
            cols["p_label"] = np.asarray(self.p_label, dtype=np.float16)  # shown to people, never ranked by
        preds = np.asarray(self.preds)
        if self.top_classes is not None:
            top = np.asarray(self.top_classes)
            cols["top_classes"] = top.astype(index if top.size == 0 or top.min() >= 0 else np.int32)  # -1 pads
            cols["top_probs"] = np.asarray(self.top_probs, dtype=np.float16)
        if self.top_classes is None or not np.array_equal(preds, np.asarray(self.top_classes)[:, 0]):
            cols["pred"] = preds.astype(index if len(self) == 0 or preds.min() >= 0 else np.int32)
        with atomic_path(path) as tmp:
            _write_npz(tmp, cols)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LossTable:
        """Read and validate: NaN or infinite losses are an error naming how many and the first id."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: loss table not found")
        _check_inflation(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a readable loss table ({e})") from None
        _check_kinds(path, cols)
        if "id" not in cols and {"id_first", "id_gap"} <= set(cols):  # stored as the first id and the gaps
            cols["id"] = np.concatenate([cols["id_first"], cols["id_gap"]]).astype(np.int64).cumsum()
        if "pred" not in cols and "top_classes" in cols:  # stored once, as the top-1 class
            cols["pred"] = cols["top_classes"][:, 0]
        need = ("id", "label", "loss", "n_records", "pred", "classes")
        missing = [c for c in need if c not in cols]
        if "path" not in cols and not {"path_buffer", "path_lengths"} <= set(cols):
            missing.append("path")
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        paths = _paths(path, cols)
        bad = ~np.isfinite(cols["loss"])
        if bad.any():
            raise DataError(f"{path}: {bad.sum()} non-finite losses (NaN or inf), first at id {cols['id'][bad][0]}")
        ids, n = cols["id"], len(cols["id"])
        extra = [c for c in ("true_label", "p_label", "top_classes", "top_probs") if c in cols]
        if any(len(cols[c]) != n for c in ("label", "loss", "n_records", "pred", *extra)) or len(paths) != n:
            raise DataError(f"{path}: columns of different lengths")
        unordered = np.flatnonzero(np.diff(ids) <= 0)  # rows are looked up by id with a binary search
        if len(unordered):
            raise DataError(
                f"{path}: ids must be unique and ascending; id {ids[unordered[0] + 1]} follows {ids[unordered[0]]}"
            )
        k = len(cols["classes"])
        labels = cols["label"].astype(np.int64)
        if n and (labels.min() < 0 or labels.max() >= k):
            raise DataError(
                f"{path}: labels must be class indices in [0, {k}); "
                f"id {ids[np.argmax((labels < 0) | (labels >= k))]} is not"
            )
        if n == 0:
            raise DataError(f"{path}: the loss table holds no samples")
        for name, low in (("pred", 0), ("true_label", 0), ("top_classes", -1)):
            if name in cols and (cols[name].min() < low or cols[name].max() >= k):
                raise DataError(
                    f"{path}: column {name} must hold class indices in [{low}, {k}); it holds {cols[name].max()}"
                )
        as_index = lambda name, t=np.int64: cols[name].astype(t) if name in cols else None  # noqa: E731
        return cls(
            ids.astype(np.int64),
            labels,
            cols["loss"].astype(np.float32),
            cols["n_records"].astype(np.int64),
            cols["pred"].astype(np.int64),
            paths,
            ClassMap(tuple(str(c) for c in cols["classes"])),
            as_index("true_label"),
            cols["p_label"].astype(np.float32) if "p_label" in cols else None,
            as_index("top_classes", np.int32),  # [N, 5]: int32 keeps 2.55M rows at 51 MB
            cols.get("top_probs"),
        )

    @property
    def is_noisy(self) -> np.ndarray | None:
        """True where the given label is wrong (known only for benchmarks)."""
        return None if self.true_labels is None else self.labels != self.true_labels


def _smallest_uint(top: int) -> type:
    return next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max)


def _write_npz(file: Path, cols: dict[str, np.ndarray]) -> None:
    """An `.npz` (a zip of `.npy` files, what `np.load` reads) whose compressible columns (paths, ids, counts, class
    indices, float16 probabilities) are deflated at a fast level and whose float32 columns, which deflate barely, are
    stored as they are."""
    with zipfile.ZipFile(file, "w", allowZip64=True) as z:
        for name, array in cols.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
            method = zipfile.ZIP_STORED if array.dtype == np.float32 else zipfile.ZIP_DEFLATED
            z.writestr(name + ".npy", buf.getbuffer(), compress_type=method, compresslevel=1)


def _paths(path: Path, cols: dict[str, np.ndarray]) -> StringColumn:
    if "path" in cols:  # written before paths became one byte buffer
        return StringColumn.from_strings(cols["path"].tolist())
    buffer, lengths = cols["path_buffer"], cols["path_lengths"].astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if buffer.dtype != np.uint8 or offsets[-1] != len(buffer):
        raise DataError(f"{path}: the path column is damaged ({offsets[-1]} bytes expected, {len(buffer)} found)")
    return StringColumn(buffer, offsets, str(cols.get("path_prefix", "")))


MAX_INFLATED = 1 << 30  # bytes a table may inflate to beyond 50 times its file size (2.55M rows: about 100 MB)
_KINDS = {  # column -> (allowed dtype kinds, dimensions)
    "id": ("iu", 1),
    "id_first": ("iu", 1),
    "id_gap": ("iu", 1),
    "label": ("iu", 1),
    "loss": ("f", 1),
    "n_records": ("iu", 1),
    "pred": ("iu", 1),
    "true_label": ("iu", 1),
    "p_label": ("f", 1),
    "top_classes": ("iu", 2),
    "top_probs": ("f", 2),
    "classes": ("U", 1),
}


def _check_inflation(path: Path) -> None:
    """Read each member's array header (shape and dtype) before anything is inflated: a small file that would
    unpack to gigabytes is refused."""
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable loss table ({e})") from None
    size = path.stat().st_size
    if total > MAX_INFLATED and total > 50 * size:
        raise DataError(
            f"{path}: would inflate to {total / 2**20:,.0f} MiB from {size / 2**20:,.1f} MiB: not a loss table"
        )


def _check_kinds(path: Path, cols: dict) -> None:
    """Each known column's dtype kind and dimensions, named in one line when wrong."""
    for name, (kinds, ndim) in _KINDS.items():
        if name in cols and (cols[name].dtype.kind not in kinds or cols[name].ndim != ndim):
            a = cols[name]
            raise DataError(f"{path}: column {name} is {a.dtype} of {a.ndim} dimensions, not what a loss table holds")
