"""Torch datasets over a manifest. Each item is `(uint8 image [C,S,S], label, id)`: the id travels with the sample
so that everything recorded per sample (losses, features) is keyed by it, whatever the sampler or the rank.

`check_images` decodes every image file once before any training (in parallel, remembered per manifest content),
so a broken body, a decompression bomb or a corrupt JPEG stops the run before its first step with the file and row,
or, when skipping bad images, is left out, counted and listed. In-memory data needs no check.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from lossguided.cache import cache_root
from lossguided.data.decode import BAD_IMAGE_ERRORS, UnreadableImageError, verify_image
from lossguided.data.decode import decode_image as _decode_image
from lossguided.data.manifest import DataError, Manifest, one_line_message
from lossguided.io import atomic_path, safe_cell, write_json
from lossguided.layout import csv_path

log = logging.getLogger("lossguided")
CHECK_VERSION = 1  # bump when verify_image starts catching more, so remembered checks are redone


def decode_image(path: str, size: int) -> torch.Tensor:
    """Open, decode and resize to size x size RGB (uint8 [3,S,S]); see `data.decode` for how and why."""
    return _decode_image(path, size)


class ImageFileDataset(Dataset):
    """Images read from files. A file that fails to decode raises a DataError naming its path and id."""

    def __init__(self, manifest: Manifest, *, image_size: int) -> None:
        if manifest.storage.kind != "files":
            raise ValueError(f"ImageFileDataset needs a manifest of image files, not {manifest.storage.kind}")
        self.paths, self.labels, self.ids = manifest.paths, manifest.labels, manifest.ids
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        try:
            img = decode_image(self.paths[i], self.image_size)
        except BAD_IMAGE_ERRORS as e:
            raise UnreadableImageError(
                f"{self.paths[i]}: id {self.ids[i]}: cannot decode image ({type(e).__name__}: {e})"
            ) from None
        return img, int(self.labels[i]), int(self.ids[i])


class ArrayDataset(Dataset):
    """In-memory uint8 images, resized once up front (bilinear, antialiased) so that an epoch costs no resizing."""

    def __init__(self, manifest: Manifest, *, image_size: int, chunk: int = 4096) -> None:
        images = manifest.images
        if images.ndim == 3:
            images = images[:, None]
        else:
            images = images.transpose(0, 3, 1, 2)
        if images.shape[-1] != image_size or images.shape[-2] != image_size:
            out = []
            for s in range(0, len(images), chunk):
                x = torch.from_numpy(np.array(images[s : s + chunk])).float()
                x = F.interpolate(
                    x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
                )
                out.append(x.round_().clamp_(0, 255).to(torch.uint8))
            self.images = torch.cat(out) if out else torch.empty(0, images.shape[1], image_size, image_size)
        else:
            self.images = torch.from_numpy(np.array(images))
        self.labels = torch.as_tensor(manifest.labels)
        self.ids = torch.as_tensor(manifest.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], self.ids[i]

    def __getitems__(self, index: list[int]):
        """Batched fetch: one gather instead of B item calls (the DataLoader uses it when present)."""
        idx = torch.as_tensor(index)
        return self.images[idx], self.labels[idx], self.ids[idx]


class BadImage(NamedTuple):
    source: str  # the manifest
    row: int  # its row (as a spreadsheet numbers it), or the position for sources without rows
    id: int
    path: str
    error: str
    pos: int  # position in the manifest

    def line(self) -> str:
        return f"{self.source}: row {self.row}: id {self.id}: unreadable image {self.path} ({self.error})"


def check_images(
    manifest: Manifest,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Manifest, list[BadImage]]:
    """Decode every image file of `manifest` in full, once, before training (`workers` processes).

    A bad image raises DataError naming the manifest, row, id and file; with `skip_bad` the readable samples are
    returned with the list of the bad ones (log it, and `write_bad_images` it into the run folder). The outcome is
    remembered under `cache_dir` (default `$LOSSGUIDED_CACHE` or ~/.cache/lossguided) by a hash of the paths, sizes
    and modification times, so the next stage on the same files costs one `stat` per file.
    """
    if manifest.storage.kind != "files":  # in memory, or checked when written (preprocessed, shards)
        return manifest, []
    paths = [str(p) for p in manifest.paths]
    cache = _cache_file(paths, cache_dir)
    bad = _read_cache(cache, manifest) if cache is not None else None
    if bad is None:
        errors = _verify_all(paths, workers)
        bad = [_bad(manifest, pos, err) for pos, err in enumerate(errors) if err is not None]
        _remember(cache, len(paths), bad)
    if not bad:
        return manifest, []
    if not skip_bad:
        more = f" ({len(bad) - 1} more bad images)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0].line()}{more}; fix or remove it, or pass --skip-bad-images to leave it out")
    keep = np.ones(len(manifest), dtype=bool)
    keep[[b.pos for b in bad]] = False
    if not keep.any():
        raise DataError(f"{manifest.source}: no image could be decoded (first: {bad[0].line()})")
    log.warning(
        "%s: left out %d of %d images that cannot be decoded (first: %s)",
        manifest.source,
        len(bad),
        len(manifest),
        bad[0].line(),
    )
    kept = manifest.subset(np.flatnonzero(keep))
    _remember(_cache_file([str(p) for p in kept.paths], cache_dir), len(kept), [])  # datasets of it: no new check
    return kept, bad


def check_all(
    manifests: Sequence[Manifest | None], *, skip_bad: bool = False, workers: int | None = None
) -> tuple[list[Manifest | None], list[BadImage]]:
    """`check_images` over a run's splits (None stays None): the checked splits and every bad image left out."""
    checked, bad = [], []
    for m in manifests:
        if m is not None:
            m, skipped = check_images(m, skip_bad=skip_bad, workers=workers)
            bad += skipped
        checked.append(m)
    unique = {(b.source, b.row, b.path): b for b in bad}  # one CSV given as train and val lists its images once
    return checked, list(unique.values())


def write_bad_images(path: str | os.PathLike, bad: list[BadImage]) -> None:
    """The skipped images as CSV (source, source_row, id, path, error), safe to open in a spreadsheet; paths are
    absolute, as in every CSV the tool writes (`layout.csv_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "source_row", "id", "path", "error"])
        w.writerows([safe_cell(b.source), b.row, b.id, safe_cell(csv_path(b.path)), safe_cell(b.error)] for b in bad)


def one_line_worker_error(e: DataError) -> DataError:
    """A DataLoader worker's DataError arrives in the main process with the worker's traceback as its message;
    keep only our line (the last one), so the user sees one line."""
    return e if "Original Traceback" not in str(e) else type(e)(one_line_message(e))


def _bad(manifest: Manifest, pos: int, error: str) -> BadImage:
    row = int(manifest.rows[pos]) if manifest.rows is not None else pos
    return BadImage(manifest.source, row, int(manifest.ids[pos]), str(manifest.paths[pos]), error, pos)


def _cache_file(paths: list[str], cache_dir: str | os.PathLike | None) -> Path | None:
    """Where the check of exactly these files (paths, sizes, mtimes) is remembered; None when one cannot be
    stat'ed (it is reported by the check, which is then not remembered)."""
    h = hashlib.sha256(f"lossguided image check v{CHECK_VERSION}\0".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    root = cache_root(cache_dir)
    return None if root is None else root / "image-checks" / f"{h.hexdigest()}.json"


def _remember(cache: Path | None, n: int, bad: list[BadImage]) -> None:
    if cache is None:
        return
    try:
        write_json(cache, {"version": CHECK_VERSION, "images": n, "bad": [[b.pos, b.error] for b in bad]})
    except (OSError, DataError) as e:  # a read-only or full home: the check is just not remembered
        log.debug("could not remember the image check in %s (%s)", cache, e)


def _read_cache(path: Path, manifest: Manifest) -> list[BadImage] | None:
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != CHECK_VERSION or saved.get("images") != len(manifest):
            return None
        return [_bad(manifest, int(pos), str(err)) for pos, err in saved["bad"] if 0 <= int(pos) < len(manifest)]
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _verify_all(paths: list[str], workers: int | None) -> list[str | None]:
    """verify_image over `paths`, in worker processes when there are many (libjpeg's warnings go to fd 2, which
    threads would share)."""
    workers = min(workers or os.cpu_count() or 1, os.cpu_count() or 1, len(paths) // 64)
    if workers <= 1:
        return [verify_image(p) for p in paths]
    log.info("checking %d images (a full decode each, %d processes; remembered for the next run)", len(paths), workers)
    chunk = max(1, min(256, len(paths) // (workers * 8)))
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(verify_image, paths, chunksize=chunk)
        return list(
            tqdm(
                results,
                total=len(paths),
                desc="check images",
                unit="img",
                leave=False,
                file=sys.stderr,
                mininterval=1.0 if sys.stderr.isatty() else 30.0,
            )
        )
