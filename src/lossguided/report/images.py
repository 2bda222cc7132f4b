"""Image access for the reports: sizes from headers only, content hashes, and small JPEG thumbnails, for image files
and for in-memory datasets (whose loss-table paths read `<source>#<id>`, e.g. `fashion-mnist:train#123`)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lossguided.data.manifest import DataError, Manifest
from lossguided.data.sources import image_by_name

_CHUNK = 1 << 20
BAD_IMAGE = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file header (PIL opens lazily: no pixel is decoded); None when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except BAD_IMAGE:
        return None


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-1 of the file's bytes (identical files, whatever their names); None when the file cannot be read."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def array_digest(pixels: np.ndarray) -> str:
    """SHA-1 of an in-memory image's shape and pixel bytes."""
    h = hashlib.sha1(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def thumbnail_jpeg(image: Image.Image, size: int = 48, quality: int = 70) -> bytes:
    """A JPEG whose longer side is at most `size` (never upscaled; the page scales small images up)."""
    image.draft("RGB", (size, size))  # JPEG files decode at 1/2..1/8 scale: big photos stay cheap
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def array_image(pixels: np.ndarray) -> Image.Image:
    """uint8 [H,W] or [H,W,3] -> PIL image."""
    return Image.fromarray(np.ascontiguousarray(pixels))


def split_builtin_path(path: str) -> tuple[str, int] | None:
    """`<source>#<id>` -> (source, id), for paths that name an in-memory image rather than a file."""
    source, sep, tail = path.rpartition("#")
    if not sep or not source or os.path.exists(path):
        return None
    try:
        return source, int(tail)
    except ValueError:
        return None


class ImageResolver:
    """Opens the image behind a loss-table path: a file, or `<source>#<id>` from an in-memory manifest that
    `builtin(source)` returns (loaded once per source). What cannot be opened is remembered in `missing`."""

    def __init__(
        self, builtin: Callable[[str], Manifest | None] | None = None, manifests: Iterable[Manifest] = ()
    ) -> None:
        self._builtin = builtin
        self._lock = threading.Lock()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}
        for m in manifests:
            self._add(m.source, m)
        self.missing: list[str] = []
        self.errors: list[str] = []

    def _add(self, source: str, manifest: Manifest | None) -> None:
        if manifest is None or manifest.images is None:
            self._arrays[source] = None
            return
        order = np.argsort(manifest.ids, kind="stable")
        self._arrays[source] = (manifest.ids[order], order, manifest.images)

    def _pixels(self, source: str, sample_id: int) -> np.ndarray | None:
        with self._lock:  # threads: load each source once
            if source not in self._arrays:
                try:
                    self._add(source, self._builtin(source) if self._builtin else None)
                except DataError as e:
                    self.errors.append(str(e))
                    self._add(source, None)
        entry = self._arrays[source]
        if entry is None:
            return None
        ids, order, images = entry
        pos = int(np.searchsorted(ids, sample_id))
        return images[order[pos]] if pos < len(ids) and ids[pos] == sample_id else None

    def open(self, path: str) -> Image.Image | None:
        named = image_by_name(path)  # a sample inside a file, e.g. a WebDataset shard's `<shard>.tar#<key>`
        if named is not None:
            return array_image(named)
        builtin = split_builtin_path(path)
        if builtin is not None:
            pixels = self._pixels(*builtin)
            return None if pixels is None else array_image(pixels)
        try:
            im = Image.open(path)
            if im.format != "JPEG":  # JPEG stays lazy so that draft() can pick a smaller decoding scale
                im.load()
            return im
        except BAD_IMAGE:
            return None

    def thumbnail(self, path: str, size: int = 48, quality: int = 70) -> bytes | None:
        im = self.open(path)
        if im is None:
            self.missing.append(path)
            return None
        try:
            return thumbnail_jpeg(im, size, quality)
        except BAD_IMAGE:
            self.missing.append(path)
            return None

    def thumbnails(
        self, paths: Sequence[str], *, size: int = 48, quality: int = 70, workers: int = 4, progress: bool | None = None
    ) -> list[bytes | None]:
        """Thumbnails in input order (None where the image is missing); threads overlap file reads and decodes."""
        if not paths:
            return []
        bar = dict(total=len(paths), desc="thumbnails", unit="img", disable=_no_bar(progress, len(paths)))

        def one(p: str) -> bytes | None:
            return self.thumbnail(p, size, quality)

        if workers <= 1:
            return list(tqdm(map(one, paths), **bar))
        with ThreadPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(one, paths, chunksize=64), **bar))


def _no_bar(progress: bool | None, n: int) -> bool | None:
    """tqdm's `disable`: forced by `progress`, else only for long loops on a terminal (None = tty check)."""
    if progress is not None:
        return not progress
    return True if n < 2000 else None
