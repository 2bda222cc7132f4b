"""What the writers of stored formats share (`lossguided preprocess`: a preprocessed folder or WebDataset shards):
each sample's name, a fingerprint of the input for resuming, and the decode-and-encode step run in DataLoader workers.
One home below both writers, so neither reaches into the other's private helpers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lossguided.data.datasets import ArrayDataset
from lossguided.data.decode import decode_image, verify_image
from lossguided.data.errors import DataError
from lossguided.data.manifest import Manifest
from lossguided.io import atomic_path, write_json
from lossguided.layout import csv_path

log = logging.getLogger("lossguided")
BAD_LIST = "bad_images.csv"  # the images a writer left out (skip_bad_images), beside what it wrote


def sample_names(manifest: Manifest) -> list[str]:
    """Each row's name as the stored format keeps it: its path, or `<source>#<id>` for in-memory images."""
    if manifest.paths is not None:
        return [str(p) for p in manifest.paths]
    return [f"{manifest.source}#{int(i)}" for i in manifest.ids]


def fingerprint(manifest: Manifest, names: list[str]) -> str:
    """What the output depends on besides the settings: ids, labels (by name) and the images' sources."""
    h = hashlib.sha1()
    h.update(manifest.ids.astype(np.int64).tobytes())
    h.update(manifest.labels.astype(np.int64).tobytes())
    h.update("\0".join(manifest.classes.names).encode())
    h.update("\0".join(names).encode())
    if manifest.images is not None:
        h.update(str(manifest.images.shape).encode())
        h.update(np.ascontiguousarray(manifest.images).tobytes())
    return h.hexdigest()


class Encoder(Dataset):
    """Row -> (row, payload, error): decodes (and for jpeg-shards encodes) in DataLoader workers; never raises for a
    bad image, so the writer decides whether to stop or skip. `storage`: "memmap" (payload: uint8 [S,S,C]) or
    "jpeg-shards" (payload: JPEG bytes)."""

    def __init__(
        self, manifest: Manifest, paths: list[str], *, image_size: int, storage: str, quality: int, subsampling: str
    ) -> None:
        self.paths, self.ids, self.source = paths, manifest.ids, manifest.source
        self.rows = manifest.rows
        self.size, self.storage, self.quality, self.subsampling = image_size, storage, quality, subsampling
        self.array = ArrayDataset(manifest, image_size=image_size) if manifest.images is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, row: int):
        try:
            if self.array is None and (why := verify_image(self.paths[row])) is not None:
                raise ValueError(why)  # a damaged JPEG that libjpeg would fill in silently
            x = self.array.images[row] if self.array is not None else decode_image(self.paths[row], self.size)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this image's problem, reported with its id
            where = f"row {self.rows[row]}: " if self.rows is not None else ""
            return (
                row,
                None,
                (
                    f"{self.source}: {where}id {int(self.ids[row])}: cannot decode image "
                    f"{self.paths[row]} ({type(e).__name__}: {e})"
                ),
            )
        hwc = np.ascontiguousarray(x.permute(1, 2, 0).numpy())
        if self.storage == "memmap":
            return row, hwc, None
        buf = io.BytesIO()
        img = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc)
        img.save(buf, format="JPEG", quality=self.quality, subsampling=self.subsampling)
        return row, buf.getvalue(), None


def claim_output_folder(out: Path, settings: dict, *, done: Path, plan: Path, what: str) -> dict | None:
    """Where a resumable writer may write `settings`' output. Returns the finished folder's record when `done`
    already holds these settings (nothing to do). Otherwise returns None once the folder is known to be this very
    write: `plan` (the unfinished write's settings, plus whatever progress the writer keeps there) matches, or the
    folder is new or empty and `plan` is written now. Anything else in the folder is an error: never overwritten,
    never mixed with another write's output."""
    same = lambda saved: {k: saved.get(k) for k in settings} == settings  # noqa: E731
    if done.is_file():
        record = _read_json(done)
        if same(record):
            log.info("%s: already written, nothing to do", out)
            return record
        raise DataError(f"{out}: holds {what} of other input or settings; remove it or use another --out")
    if plan.is_file():
        if not same(_read_json(plan)):
            raise DataError(
                f"{out}: holds an unfinished write of {what} with other input or settings; remove it or use another "
                "--out"
            )
        return None
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: not empty and not {what}; choose an empty or new --out")
    write_json(plan, settings)
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path}: damaged; remove {path.parent} and write it again") from None


def identity(item):
    """The DataLoader's collate for `Encoder`: items pass through one at a time."""
    return item


def write_bad_list(path: str | os.PathLike, manifest: Manifest, names: list[str], bad: list[tuple[int, str]]) -> None:
    """The left-out images as CSV (id, path, source_row, error) from (row, error) pairs; paths absolute, as in every
    CSV the tool writes."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "source_row", "error"])
        for r, e in bad:
            row = int(manifest.rows[r]) if manifest.rows is not None else r
            w.writerow([int(manifest.ids[r]), csv_path(names[r]), row, e])
    log.warning("skipped %d unreadable images, listed in %s", len(bad), path)
