"""On-disk feature store for ensembling: one directory per model holding its pre-classifier features and linear head.

Saving 50,030 logits per image for 250,130 test images costs ~50 GB per model, so each model stores its D-dimensional
features instead (~1 GB at D=2048 in float16) plus its head, and the ensemble recomputes logits chunk by chunk. Features
of test-time-augmented views are summed before saving; the head being linear, ``summed @ W.T + n_views * b`` equals
the sum of the views' logits. A directory holds ``features.npy`` (float16 or float32, [N, D], written in place through
a memmap), ``ids.npy`` (int64, [N]), ``head.npz`` (``weight`` float32 [K, D], ``bias`` float32 [K]) and ``meta.json``
(classes, n_views, tta, model, dtype, n_rows, dim, rows_done, chunk_rows, complete). Every file appears by an atomic
rename; ``meta.json`` is rewritten after each chunk, so ``rows_done`` never counts a row that is not on disk and an
interrupted extraction resumes from its last finished chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossguided.io import atomic_path, write_npz, write_text

__all__ = [
    "FEATURE_DTYPES",
    "FeatureSet",
    "FeatureWriter",
    "check_compatible",
    "open_features",
]

FORMAT_VERSION = 1
FEATURE_DTYPES = ("float16", "float32")
FEATURES_FILE = "features.npy"
IDS_FILE = "ids.npy"
HEAD_FILE = "head.npz"
META_FILE = "meta.json"
_ALL_FILES = (META_FILE, HEAD_FILE, FEATURES_FILE, IDS_FILE)
# meta.json keys that must agree when an interrupted extraction is resumed
_RESUME_KEYS = ("format", "n_rows", "dim", "dtype", "n_views", "tta", "model")


@dataclass(frozen=True)
class FeatureSet:
    """One model's stored outputs: features [N, D] (read-only memmap), ids [N], head weight [K, D] and bias [K]."""

    path: Path
    features: np.ndarray
    ids: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    classes: list[str]
    n_views: int
    meta: dict[str, Any]

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    # compact: the class list of 50k names is rewritten after every chunk
    write_text(path / META_FILE, json.dumps(meta, separators=(",", ":")) + "\n")


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    needed = ("classes", "n_views", "dtype", "n_rows", "dim", "rows_done", "complete")
    missing = [key for key in needed if key not in meta]
    if missing:
        raise ValueError(f"{file}: missing keys {missing}")
    return meta


def _npy_layout(file: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from an .npy header, refusing files shorter than the header promises."""
    with open(file, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            raise ValueError(f"{file}: truncated or not an .npy file ({e})") from None
        offset = f.tell()
    if fortran:
        raise ValueError(f"{file}: Fortran-ordered arrays are not supported")
    if dtype.hasobject:
        raise ValueError(f"{file}: object arrays are not allowed")
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = file.stat().st_size
    if size < needed:
        raise ValueError(
            f"{file}: truncated: {size} bytes on disk but the header's shape {tuple(shape)} of {dtype} needs {needed}"
        )
    return tuple(shape), dtype, offset


def _load_head(file: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("weight", "bias") if key in npz.files}
            names = list(npz.files)
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, or ValueError for pickled/damaged members
        raise ValueError(f"{file}: unreadable head archive ({type(e).__name__}: {e})") from None
    if len(arrays) != 2:
        raise ValueError(f"{file}: needs arrays 'weight' and 'bias', has {names}")
    weight, bias = arrays["weight"], arrays["bias"]
    if weight.dtype != np.float32 or bias.dtype != np.float32:
        raise ValueError(f"{file}: head must be float32, got weight {weight.dtype} and bias {bias.dtype}")
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError(f"{file}: weight must be [K, D] and bias [K], got {weight.shape} and {bias.shape}")
    return weight, bias


def open_features(path: str | os.PathLike) -> FeatureSet:
    """Open a finished feature directory; raise FileNotFoundError/ValueError naming the directory when it is not one.

    Checks: all four files present, the extraction complete (rows_done == n_rows), neither .npy truncated, and the
    shapes consistent (features [n_rows, D] of the recorded dtype, ids [n_rows] int64, weight [K, D], bias [K],
    K class names).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: feature directory does not exist")
    missing = [name for name in _ALL_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: not a feature directory, missing {missing}")
    meta = _read_meta(path)
    n_rows, rows_done = int(meta["n_rows"]), int(meta["rows_done"])
    if rows_done < n_rows or not meta["complete"]:
        hint = "finish() was never called" if rows_done >= n_rows else "resume it with FeatureWriter.create(...)"
        raise ValueError(f"{path}: incomplete extraction, rows_done={rows_done} of n_rows={n_rows}; {hint}")
    shape, dtype, _ = _npy_layout(path / FEATURES_FILE)
    if dtype.name != meta["dtype"] or shape != (n_rows, int(meta["dim"])):
        raise ValueError(
            f"{path / FEATURES_FILE}: shape {shape} dtype {dtype.name} but meta.json says "
            f"({n_rows}, {meta['dim']}) {meta['dtype']}"
        )
    id_shape, id_dtype, _ = _npy_layout(path / IDS_FILE)
    if id_dtype != np.int64 or id_shape != (n_rows,):
        raise ValueError(f"{path / IDS_FILE}: expected int64 of shape ({n_rows},), got {id_dtype} {id_shape}")
    weight, bias = _load_head(path / HEAD_FILE)
    if weight.shape[1] != shape[1]:
        raise ValueError(f"{path}: features have D={shape[1]} but the head's weight is {weight.shape}")
    classes = [str(c) for c in meta["classes"]]
    if len(classes) != weight.shape[0]:
        raise ValueError(f"{path}: {len(classes)} class names but the head has K={weight.shape[0]} rows")
    n_views = int(meta["n_views"])
    if n_views < 1:
        raise ValueError(f"{path / META_FILE}: n_views={n_views} must be >= 1")
    features = np.load(path / FEATURES_FILE, mmap_mode="r")
    ids = np.load(path / IDS_FILE)
    return FeatureSet(path, features, ids, weight, bias, classes, n_views, meta)


def check_compatible(sets: Sequence[FeatureSet]) -> None:
    """Raise ValueError unless the sets can be ensembled row by row: same classes, same ids in the same order.

    The feature dimension may differ between models (each has its own head) but must match within each model.
    """
    if not sets:
        raise ValueError("check_compatible: no feature sets given")
    first = sets[0]
    for fs in sets:
        if fs.features.ndim != 2 or fs.weight.ndim != 2 or fs.features.shape[1] != fs.weight.shape[1]:
            raise ValueError(
                f"{fs.path}: features {tuple(fs.features.shape)} do not match head weight {tuple(fs.weight.shape)}"
            )
        if fs.bias.shape != (fs.weight.shape[0],):
            raise ValueError(f"{fs.path}: bias {tuple(fs.bias.shape)} does not match weight {tuple(fs.weight.shape)}")
    for fs in sets[1:]:
        if fs.classes != first.classes:
            n = min(len(fs.classes), len(first.classes))
            j = next((i for i in range(n) if fs.classes[i] != first.classes[i]), n)
            a = repr(first.classes[j]) if j < len(first.classes) else "<none>"
            b = repr(fs.classes[j]) if j < len(fs.classes) else "<none>"
            raise ValueError(
                f"class lists differ at index {j}: {a} in {first.path} vs {b} in {fs.path} "
                f"({len(first.classes)} vs {len(fs.classes)} classes)"
            )
        if len(fs.ids) != len(first.ids):
            raise ValueError(f"row counts differ: {len(first.ids)} ids in {first.path} vs {len(fs.ids)} in {fs.path}")
        diff = np.flatnonzero(np.asarray(fs.ids) != np.asarray(first.ids))
        if diff.size:
            j = int(diff[0])
            raise ValueError(
                f"ids differ at position {j}: {int(first.ids[j])} in {first.path} vs {int(fs.ids[j])} in {fs.path} "
                f"({diff.size} positions differ)"
            )


class FeatureWriter:
    """Writes one model's features chunk by chunk into a feature directory, resumable after an interruption.

    Use ``FeatureWriter.create``; write rows in order with ``write_chunk(writer.rows_done, feats, ids)`` and call
    ``finish()``. After a crash, ``create(..., resume=True)`` reopens the directory and ``rows_done`` says where the
    last finished chunk ended.
    """

    def __init__(self, path: Path, meta: dict[str, Any], features: np.memmap, ids: np.memmap) -> None:
        self.path = path
        self.meta = meta
        self._features = features
        self._ids = ids

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        n_rows: int,
        weight: np.ndarray,
        bias: np.ndarray,
        classes: Sequence[str],
        n_views: int = 1,
        tta: str = "none",
        model: str = "",
        dtype: str = "float16",
        chunk_rows: int = 1024,
        extra: dict[str, Any] | None = None,
        resume: bool = True,
    ) -> FeatureWriter:
        """Start (or, with ``resume``, continue) an extraction of ``n_rows`` rows for a head weight [K, D], bias [K].

        Raises FileExistsError when the directory already holds a complete extraction, or an incomplete one and
        ``resume`` is False; ValueError when the incomplete one was started with different settings or head.
        """
        path = Path(path)
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        classes = [str(c) for c in classes]
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"dtype={dtype!r}: must be one of {FEATURE_DTYPES}")
        if n_rows < 1:
            raise ValueError(f"n_rows={n_rows}: must be >= 1")
        if n_views < 1:
            raise ValueError(f"n_views={n_views}: must be >= 1")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows={chunk_rows}: must be >= 1")
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"head must be weight [K, D] and bias [K], got {weight.shape} and {bias.shape}")
        if len(classes) != weight.shape[0]:
            raise ValueError(f"{len(classes)} class names for a head with K={weight.shape[0]} rows")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError("head weight or bias holds non-finite values")
        reserved = {*_RESUME_KEYS, "n_classes", "chunk_rows", "rows_done", "complete", "classes"}
        clash = sorted(set(extra or {}) & reserved)
        if clash:
            raise ValueError(f"extra={clash}: these meta.json keys are set by the writer")
        meta: dict[str, Any] = {
            **(extra or {}),
            "format": FORMAT_VERSION,
            "model": model,
            "tta": tta,
            "n_views": int(n_views),
            "dtype": dtype,
            "n_rows": int(n_rows),
            "dim": int(weight.shape[1]),
            "n_classes": int(weight.shape[0]),
            "chunk_rows": int(chunk_rows),
            "rows_done": 0,
            "complete": False,
            "classes": classes,
        }
        if (path / META_FILE).exists():
            return cls._reopen(path, meta, weight, bias, resume=resume)
        path.mkdir(parents=True, exist_ok=True)
        write_npz(path / HEAD_FILE, weight=weight, bias=bias)
        # create each memmap under a temporary name; the open mapping follows the file through the rename
        with atomic_path(path / FEATURES_FILE) as tmp:
            features = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, weight.shape[1]))
            features.flush()
            _reserve(tmp, path / FEATURES_FILE)
        with atomic_path(path / IDS_FILE) as tmp:
            ids = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(n_rows,))
            ids.flush()
            _reserve(tmp, path / IDS_FILE)
        _write_meta(path, meta)  # last: its presence marks the directory as started
        return cls(path, meta, features, ids)

    @classmethod
    def _reopen(
        cls, path: Path, meta: dict[str, Any], weight: np.ndarray, bias: np.ndarray, *, resume: bool
    ) -> FeatureWriter:
        old = _read_meta(path)
        if old["complete"]:
            raise FileExistsError(f"{path}: already holds a complete extraction; remove it to extract again")
        if not resume:
            raise FileExistsError(f"{path}: holds an interrupted extraction; pass resume=True to continue it")
        for key in (*_RESUME_KEYS, *(["image_size"] if "image_size" in meta else [])):  # rows of one size only
            if old.get(key) != meta[key]:
                raise ValueError(f"{path}: cannot resume, {key}={old.get(key)!r} on disk but {meta[key]!r} requested")
        if old["classes"] != meta["classes"]:
            raise ValueError(f"{path}: cannot resume, the class list differs from the one on disk")
        old_weight, old_bias = _load_head(path / HEAD_FILE)
        if not (np.array_equal(old_weight, weight) and np.array_equal(old_bias, bias)):
            raise ValueError(f"{path}: cannot resume, the head differs from the one on disk")
        n_rows, dim = int(meta["n_rows"]), int(meta["dim"])
        for name, want_shape, want_dtype in (
            (FEATURES_FILE, (n_rows, dim), np.dtype(meta["dtype"])),
            (IDS_FILE, (n_rows,), np.dtype(np.int64)),
        ):
            shape, dtype, _ = _npy_layout(path / name)
            if shape != want_shape or dtype != want_dtype:
                raise ValueError(f"{path / name}: {shape} {dtype} on disk, expected {want_shape} {want_dtype}")
        features = np.load(path / FEATURES_FILE, mmap_mode="r+")
        ids = np.load(path / IDS_FILE, mmap_mode="r+")
        meta = {**meta, "rows_done": int(old["rows_done"])}
        return cls(path, meta, features, ids)

    @property
    def rows_done(self) -> int:
        """Rows [0, rows_done) are on disk; the next chunk starts here."""
        return int(self.meta["rows_done"])

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    def write_chunk(self, start: int, feats: Any, ids: Any) -> None:
        """Store rows [start, start + n) — features [n, D] (numpy or torch, summed over views), ids [n] — then
        record them in meta.json. Chunks go in order: ``start`` must equal ``rows_done``."""
        if self.complete:
            raise ValueError(f"{self.path}: extraction already finished")
        if start != self.rows_done:
            raise ValueError(f"start={start}: chunks must be written in order, the next row is {self.rows_done}")
        feats = _to_numpy(feats)
        ids = _to_numpy(ids)
        n = feats.shape[0] if feats.ndim == 2 else -1
        if feats.ndim != 2 or feats.shape[1] != self._features.shape[1]:
            raise ValueError(f"feats of shape {feats.shape}: expected [n, {self._features.shape[1]}]")
        if ids.shape != (n,):
            raise ValueError(f"ids of shape {ids.shape}: expected [{n}] to match feats")
        if n == 0 or start + n > self.n_rows:
            raise ValueError(f"chunk of {n} rows at start={start} does not fit n_rows={self.n_rows}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids dtype {ids.dtype}: must be integer")
        with np.errstate(over="ignore"):  # reported below, with the row
            stored = feats.astype(self._features.dtype, copy=False)
        bad = np.flatnonzero(~np.isfinite(stored).all(axis=1))
        if bad.size:  # float16 overflows at 65504: refuse rather than store inf
            raise ValueError(
                f"row {start + int(bad[0])}: non-finite features as {self._features.dtype} ({bad.size} rows in chunk)"
            )
        self._features[start : start + n] = stored
        self._ids[start : start + n] = ids
        self._features.flush()
        self._ids.flush()
        self.meta["rows_done"] = start + n
        _write_meta(self.path, self.meta)

    def finish(self) -> FeatureSet:
        """Mark the extraction complete (all rows written) and return the directory opened for reading."""
        if self.rows_done != self.n_rows:
            raise ValueError(f"{self.path}: finish() with rows_done={self.rows_done} of n_rows={self.n_rows}")
        self._features.flush()
        self._ids.flush()
        self.meta["complete"] = True
        _write_meta(self.path, self.meta)
        return open_features(self.path)


def _reserve(tmp: Path, final: Path) -> None:
    """Give a new memmap file its disk blocks now: a write through the map into a sparse file on a full disk kills
    the process with SIGBUS; reserving first makes it a one-line DiskFullError naming the file."""
    from lossguided.disk import preallocate

    with open(tmp, "r+b") as f:
        preallocate(f.fileno(), os.fstat(f.fileno()).st_size, path=final)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)
