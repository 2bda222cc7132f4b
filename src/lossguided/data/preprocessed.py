"""Preprocessed datasets: decode and resize every image once (`lossguided preprocess`), then train from the result.

Which format, and why. The decode path (`data.decode`) costs ~4 ms per product photo and core, so at AliProducts'
2.5M images one epoch is ~3 core-hours of decoding, repeated every epoch of every stage. Writing the images once,
already at S x S, removes that. Two formats, both keyed by sample id, with the class map, labels and the original
paths kept:

* ``jpeg-shards`` (the default, and the one for 2.5M images): each image re-encoded at S x S as a JPEG (quality 90,
  4:2:0 chroma, settable) and appended to one big file per shard of ``shard_size`` samples (``shards/00000.jpgs``);
  every sample's (shard, offset, length) is in ``samples.npz``. At 256 x 256 a product photo takes ~20 KB, so 2.5M
  images are ~50 GB: a local SSD holds them and a large page cache most of them. A sample is one ``pread`` (no
  per-file open/stat: filesystems and object stores dislike millions of small files) and a 256 x 256 decode of
  ~0.5 ms, more than 10x cheaper than decoding and resizing the original. The price is JPEG's loss at quality 90,
  ~2-3 grey levels mean absolute difference, far below what the flips and the label noise do to training.
* ``memmap``: raw uint8 ``images.u8`` [N,S,S,C] (C = 3, or 1 for a grayscale set) read through ``np.memmap``:
  exact pixels and no decoding at all, a gather per batch, but S*S*C bytes an image (196,608 at 256: 2.5M images
  would be 492 GB). For sets that fit on disk and ideally in RAM (up to a few hundred thousand images).

Writing is resumable and atomic: samples are written shard by shard, each shard's data renamed into place and then
marked done in ``.partial/parts``; rerunning the same command after a crash or Ctrl-C redoes only unfinished shards.
``manifest.json`` (format, size, class map, counts) is written last, so a folder with it is complete. An image that
cannot be decoded stops the run with its path and id, or with ``skip_bad_images`` is left out and listed in
``bad_images.csv`` (id, path, source_row, error).

Layout::

    DIR/manifest.json    {"format": "lossguided-preprocessed", "storage": ..., "image_size": S, "classes": [...], ...}
    DIR/samples.npz      id, label, row [, shard, offset, length] [, true_label], paths (NUL-joined UTF-8)
    DIR/images.u8        memmap storage: uint8 [rows, S, S, C] (a skipped image leaves its row unused)
    DIR/shards/*.jpgs    jpeg-shards storage: concatenated JPEG files
    DIR/bad_images.csv   only when images were skipped
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lossguided.data.decode import decode_bytes, resize_uint8
from lossguided.data.encode import (
    BAD_LIST,
    Encoder,
    claim_output_folder,
    fingerprint,
    identity,
    sample_names,
    write_bad_list,
)
from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.storage import Storage
from lossguided.io import disk_errors, write_json, write_npz

log = logging.getLogger("lossguided")

FORMAT = "lossguided-preprocessed"
VERSION = 1
STORAGES = ("jpeg-shards", "memmap")
META = "manifest.json"
SAMPLES = "samples.npz"
PARTIAL = ".partial"
MEMMAP_FILE = "images.u8"
SHARD_DIR = "shards"


# -- writing ----------------------------------------------------------------------------------------------------
class _ShardWriter:
    """jpeg-shards: one shard's JPEGs appended to a temporary file, renamed into place when the shard is done."""

    def __init__(self, out: Path) -> None:
        self.dir = out / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.f = None

    @staticmethod
    def path(out: Path, k: int) -> Path:
        return out / SHARD_DIR / f"{k:05d}.jpgs"

    def start(self, k: int, rows: np.ndarray) -> None:
        self.k, self.tmp = k, self.dir / f".{k:05d}.jpgs.tmp"
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()
        self.offset = np.zeros(len(rows), dtype=np.int64)
        self.length = np.zeros(len(rows), dtype=np.int64)
        self.first, self.pos = int(rows[0]), 0

    def put(self, row: int, data: bytes) -> None:
        i = row - self.first
        self.offset[i], self.length[i] = self.pos, len(data)
        self.f.write(data)
        self.pos += len(data)

    def finish(self) -> dict:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        os.replace(self.tmp, self.path(self.dir.parent, self.k))
        return {"offset": self.offset, "length": self.length}

    def close(self) -> None:
        if self.f is not None:
            try:
                self.f.close()  # flushing an unfinished shard on a full disk fails again: it is removed anyway
            except OSError:
                pass
            self.f = None
            self.tmp.unlink(missing_ok=True)

    def finalize(self, out: Path) -> int:
        return sum(p.stat().st_size for p in (out / SHARD_DIR).glob("*.jpgs"))


class _MemmapWriter:
    """memmap: rows written in place into `images.u8.partial` (made full size up front), flushed per shard."""

    @staticmethod
    def valid(out: Path, n: int, size: int, channels: int) -> bool:
        path = out / (MEMMAP_FILE + ".partial")
        return path.is_file() and path.stat().st_size == n * size * size * channels

    def __init__(self, out: Path, n: int, size: int, channels: int) -> None:
        from lossguided.disk import preallocate

        self.path = out / (MEMMAP_FILE + ".partial")
        nbytes = n * size * size * channels
        with disk_errors(self.path):
            if not self.valid(out, n, size, channels):
                with open(self.path, "wb") as f:
                    f.truncate(nbytes)
            # A write through the map into a sparse file on a full disk is SIGBUS, not an error: reserve it now.
            with open(self.path, "r+b") as f:
                preallocate(f.fileno(), nbytes, path=self.path)
        self.mm = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(n, size, size, channels))

    def start(self, k: int, rows: np.ndarray) -> None:
        pass

    def put(self, row: int, data: np.ndarray) -> None:
        self.mm[row] = data

    def finish(self) -> dict:
        self.mm.flush()
        return {}

    def close(self) -> None:
        self.mm.flush()

    def finalize(self, out: Path) -> int:
        del self.mm
        os.replace(self.path, out / MEMMAP_FILE)
        return (out / MEMMAP_FILE).stat().st_size


def preprocess(
    manifest: Manifest,
    out_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    storage: str = "jpeg-shards",
    quality: int = 90,
    subsampling: str = "4:2:0",
    shard_size: int = 10_000,
    workers: int = 0,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> dict:
    """Write `manifest`'s images, decoded and resized to image_size, into `out_dir` (see the module doc).

    Returns a summary dict. Rerunning with the same input and settings resumes an interrupted run, or returns at
    once when the folder is complete; other input or settings in a non-empty folder are an error.
    """
    from tqdm import tqdm

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, not {storage!r}")
    if image_size < 1 or shard_size < 1 or not 1 <= quality <= 100:
        raise ValueError("image_size and shard_size must be positive and quality in 1..100")
    out = Path(out_dir)
    paths = sample_names(manifest)
    channels = 1 if manifest.images is not None and manifest.images.ndim == 3 else 3
    settings = {
        "storage": storage,
        "image_size": image_size,
        "channels": channels,
        "shard_size": shard_size,
        "quality": quality if storage == "jpeg-shards" else None,
        "subsampling": subsampling if storage == "jpeg-shards" else None,
        "rows": len(manifest),
        "fingerprint": fingerprint(manifest, paths),
    }

    work = out / PARTIAL
    if (out / META).is_file():
        _read_meta(out)  # a folder of another format or version is an error, not "other settings"
    meta = claim_output_folder(out, settings, done=out / META, plan=work / "plan.json", what="a preprocessed dataset")
    if meta is not None:
        return _summary(out, meta, resumed=0)
    (work / "parts").mkdir(parents=True, exist_ok=True)

    n = len(manifest)
    n_shards = -(-n // shard_size)
    part_path = lambda k: work / "parts" / f"{k:05d}.npz"  # noqa: E731
    if storage == "memmap" and not _MemmapWriter.valid(out, n, image_size, channels):
        for part in (work / "parts").glob("*.npz"):  # the pixel file is gone or damaged: no shard counts as done
            part.unlink()
    done = lambda k: part_path(k).is_file() and (storage == "memmap" or _ShardWriter.path(out, k).is_file())  # noqa: E731
    todo = [k for k in range(n_shards) if not done(k)]
    resumed = n_shards - len(todo)
    todo_rows = (
        np.concatenate([np.arange(k * shard_size, min(n, (k + 1) * shard_size)) for k in todo])
        if todo
        else np.zeros(0, dtype=np.int64)
    )
    writer = _ShardWriter(out) if storage == "jpeg-shards" else _MemmapWriter(out, n, image_size, channels)
    if todo:
        encoder = Encoder(
            manifest, paths, image_size=image_size, storage=storage, quality=quality, subsampling=subsampling
        )
        workers = max(0, min(workers, os.cpu_count() or 1))
        loader = DataLoader(
            encoder,
            batch_size=None,
            sampler=todo_rows.tolist(),
            num_workers=workers,
            collate_fn=identity,
            prefetch_factor=8 if workers else None,
        )
        bar = tqdm(
            total=n,
            initial=n - len(todo_rows),
            unit="img",
            desc=f"preprocess {out.name}",
            disable=not progress,
            dynamic_ncols=True,
        )
        current, bad, rows, ok = None, [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        try:
            with disk_errors(out):
                for row, payload, error in loader:
                    k = row // shard_size
                    if k != current:
                        if current is not None:
                            _finish_shard(writer, part_path(current), rows, ok, bad)
                        current, bad = k, []
                        rows = np.arange(k * shard_size, min(n, (k + 1) * shard_size))
                        ok = np.zeros(len(rows), dtype=bool)
                        writer.start(k, rows)
                    if error is not None:
                        if not skip_bad_images:
                            raise DataError(f"{error}; fix or remove it, or pass --skip-bad-images to leave it out")
                        bad.append((row, error))
                    else:
                        writer.put(row, payload)
                        ok[row - rows[0]] = True
                    bar.update()
                if current is not None:
                    _finish_shard(writer, part_path(current), rows, ok, bad)
        finally:
            bar.close()
            writer.close()
    return _finalize(manifest, out, work, writer, paths, settings, n_shards, resumed)


def _finish_shard(writer, part: Path, rows: np.ndarray, ok: np.ndarray, bad: list) -> None:
    extra = writer.finish()
    write_npz(
        part,
        rows=rows,
        ok=ok,
        bad_rows=np.array([r for r, _ in bad], dtype=np.int64),
        bad_errors=np.array([e for _, e in bad], dtype=str),
        **extra,
    )


def _finalize(
    manifest: Manifest, out: Path, work: Path, writer, paths: list[str], settings: dict, n_shards: int, resumed: int
) -> dict:
    n = len(manifest)
    ok = np.zeros(n, dtype=bool)
    offset, length = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    bad_rows, bad_errors = [], []
    for k in range(n_shards):
        with np.load(work / "parts" / f"{k:05d}.npz") as z:
            rows = z["rows"]
            ok[rows] = z["ok"]
            if "offset" in z.files:
                offset[rows], length[rows] = z["offset"], z["length"]
            bad_rows += z["bad_rows"].tolist()
            bad_errors += z["bad_errors"].tolist()
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise DataError(f"{manifest.source}: no image could be decoded; see {out / BAD_LIST}")
    nbytes = writer.finalize(out)
    cols = {
        "id": manifest.ids[keep],
        "label": manifest.labels[keep],
        "row": keep,
        "paths": np.frombuffer("\0".join(paths[i] for i in keep).encode(), dtype=np.uint8),
    }
    if settings["storage"] == "jpeg-shards":
        cols |= {"shard": keep // settings["shard_size"], "offset": offset[keep], "length": length[keep]}
    if manifest.true_labels is not None:
        cols["true_label"] = manifest.true_labels[keep]
    write_npz(out / SAMPLES, **cols)
    if bad_rows:
        write_bad_list(out / BAD_LIST, manifest, paths, list(zip(bad_rows, bad_errors, strict=True)))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **settings,
        "samples": int(len(keep)),
        "skipped": len(bad_rows),
        "bytes": int(nbytes),
        "classes": list(manifest.classes.names),
        "source": manifest.source,
    }
    write_json(out / META, meta)
    shutil.rmtree(work, ignore_errors=True)
    return _summary(out, meta, resumed=resumed)


def _summary(out: Path, meta: dict, *, resumed: int) -> dict:
    s = {
        "out": str(out),
        "storage": meta["storage"],
        "image_size": meta["image_size"],
        "samples": meta["samples"],
        "skipped": meta["skipped"],
        "bytes": meta["bytes"],
        "bytes_per_image": round(meta["bytes"] / max(1, meta["samples"]), 1),
        "resumed_shards": resumed,
    }
    if meta["skipped"]:
        s["bad_images"] = str(out / BAD_LIST)
    return s


# -- reading ----------------------------------------------------------------------------------------------------
def is_preprocessed(path: str | os.PathLike) -> bool:
    """A folder written by `preprocess`, finished or not (an unfinished one is reported as such when read)."""
    path = Path(path)
    return (path / META).is_file() or (path / PARTIAL / "plan.json").is_file()


def _read_meta(root: Path) -> dict:
    try:
        meta = json.loads((root / META).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{root / META}: unreadable ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION or meta.get("storage") not in STORAGES:
        raise DataError(f"{root / META}: not a {FORMAT} v{VERSION} folder")
    return meta


def read_preprocessed(root: str | os.PathLike, *, classes: ClassMap | None = None) -> Manifest:
    """The manifest of a preprocessed folder (ids, labels, class map and original paths as they were written),
    labels re-encoded through `classes` when given. Its storage points the datasets at the folder."""
    root = Path(root)
    if not (root / META).is_file():
        raise DataError(
            f"{root}: unfinished preprocessing (no {META}); rerun the same `lossguided preprocess` command to finish it"
        )
    store = open_store(root)
    manifest = Manifest(
        ids=store.ids,
        labels=store.labels,
        classes=store.classes,
        source=str(root),
        storage=Storage.preprocessed(str(root), store.paths),
        true_labels=store.true_labels,
    )
    return manifest if classes is None else manifest.with_classes(classes)


class PreprocessedStore:
    """A preprocessed folder's index, opened once per process (files are opened lazily, also after a fork)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.meta = meta = _read_meta(self.root)
        self.storage, self.image_size, self.channels = meta["storage"], meta["image_size"], meta["channels"]
        self.classes = ClassMap(tuple(meta["classes"]))
        try:
            with np.load(self.root / SAMPLES, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{self.root / SAMPLES}: unreadable ({e})") from None
        self.ids, self.labels, self.rows = cols["id"], cols["label"], cols["row"]
        self.true_labels = cols.get("true_label")
        self.paths = np.array(cols["paths"].tobytes().decode().split("\0"), dtype=object)
        self.shard, self.offset, self.length = cols.get("shard"), cols.get("offset"), cols.get("length")
        self._order = np.argsort(self.ids, kind="stable")
        self._check()
        self._mm = None
        self._fds: dict[int, int] = {}

    def _check(self) -> None:
        """File sizes against the index, so a truncated copy fails now with the file's name, not mid-epoch."""
        if self.storage == "memmap":
            path = self.root / MEMMAP_FILE
            need = self.meta["rows"] * self.image_size**2 * self.channels
            if not path.is_file() or path.stat().st_size != need:
                raise DataError(f"{path}: missing or not {need} bytes; the preprocessed folder is damaged")
            return
        ends = np.zeros(int(self.shard.max()) + 1, dtype=np.int64)
        np.maximum.at(ends, self.shard, self.offset + self.length)
        for k in np.flatnonzero(ends):
            path = self.shard_path(int(k))
            if not path.is_file() or path.stat().st_size < ends[k]:
                raise DataError(f"{path}: missing or shorter than its index; the preprocessed folder is damaged")

    def shard_path(self, k: int) -> Path:
        return self.root / SHARD_DIR / f"{k:05d}.jpgs"

    def positions_of(self, ids: np.ndarray, *, source: str) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        pos = self._order[np.searchsorted(self.ids, ids, sorter=self._order).clip(0, max(0, len(self.ids) - 1))]
        bad = self.ids[pos] != ids if len(self.ids) else np.ones(len(ids), dtype=bool)
        if bad.any():
            raise DataError(
                f"{source}: {int(bad.sum())} ids are not in the preprocessed folder {self.root}, "
                f"e.g. {ids[bad][:5].tolist()}"
            )
        return pos

    def __getstate__(self) -> dict:  # worker processes open their own files
        state = self.__dict__.copy()
        state["_mm"], state["_fds"] = None, {}
        return state

    @property
    def memmap(self) -> np.ndarray:
        if self._mm is None:
            shape = (self.meta["rows"], self.image_size, self.image_size, self.channels)
            self._mm = np.memmap(self.root / MEMMAP_FILE, dtype=np.uint8, mode="r", shape=shape)
        return self._mm

    def read(self, pos: int) -> torch.Tensor:
        """uint8 [C,S,S] of the sample at position `pos` of the index."""
        if self.storage == "memmap":
            return torch.from_numpy(np.array(self.memmap[self.rows[pos]])).permute(2, 0, 1)
        k = int(self.shard[pos])
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds[k] = os.open(self.shard_path(k), os.O_RDONLY)
        data = os.pread(fd, int(self.length[pos]), int(self.offset[pos]))
        try:
            # Pillow, not torchvision.io.decode_jpeg: that is ~1.4x faster on a 256x256 JPEG (less per-call overhead),
            # same pixels, but deprecated since torchvision 0.29 and warns on every call.
            return decode_bytes(data)
        except (OSError, ValueError) as e:
            raise DataError(
                f"{self.shard_path(k)}: id {int(self.ids[pos])}: damaged image at byte "
                f"{int(self.offset[pos])} ({e}); the preprocessed folder is damaged"
            ) from None

    def read_many(self, pos: np.ndarray) -> torch.Tensor:
        """uint8 [B,C,S,S] (channels-last strides) of several samples: one gather from the memmap."""
        return torch.from_numpy(np.asarray(self.memmap[self.rows[pos]])).permute(0, 3, 1, 2)

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


_STORES: dict[str, PreprocessedStore] = {}


def open_store(root: str | os.PathLike) -> PreprocessedStore:
    """The store of `root`, cached per process (a manifest and its subsets share one index)."""
    key = str(Path(root).resolve())
    meta_path = Path(key) / META
    stamp = meta_path.stat().st_mtime_ns if meta_path.is_file() else None
    cached = _STORES.get(key)
    if cached is None or cached._stamp != stamp:
        cached = PreprocessedStore(key)
        cached._stamp = stamp
        _STORES[key] = cached
    return cached


class PreprocessedDataset(Dataset):
    """`(uint8 [C,S,S], label, id)` read from a preprocessed folder, for the samples (and labels) of `manifest`.

    A requested image size other than the folder's is served by resizing on the fly (bilinear, antialiased).
    """

    def __init__(self, manifest: Manifest, *, image_size: int) -> None:
        self.store = open_store(manifest.storage.root)
        self.pos = self.store.positions_of(manifest.ids, source=manifest.source)
        self.ids, self.labels = manifest.ids, manifest.labels
        self._ids_t, self._labels_t = torch.as_tensor(self.ids), torch.as_tensor(self.labels)
        self.image_size = image_size
        self.resize = image_size != self.store.image_size
        if self.resize:
            log.warning(
                "%s holds %dx%d images; resizing to %d on the fly (preprocess at this size to avoid it)",
                self.store.root,
                self.store.image_size,
                self.store.image_size,
                image_size,
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        x = self.store.read(int(self.pos[i]))
        if self.resize:
            x = resize_uint8(x, self.image_size)
        return x, int(self.labels[i]), int(self.ids[i])


class MemmapDataset(PreprocessedDataset):
    """The memmap storage: batches are one gather (`__getitems__`), read in the main process like in-memory data."""

    def __getitems__(self, index: list[int]):
        x = self.store.read_many(self.pos[np.asarray(index, dtype=np.int64)])
        if self.resize:
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        idx = torch.as_tensor(index)
        return x, self._labels_t[idx], self._ids_t[idx]


def make_preprocessed_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    store = open_store(manifest.storage.root)
    cls = MemmapDataset if store.storage == "memmap" else PreprocessedDataset
    return cls(manifest, image_size=image_size)
