"""Hostile input for the reliability suite (imported by its tests; a module of its own name, since `conftest`
names another folder's module when the whole suite runs): image files broken in the ways real data sets and
attackers break them, and a child Python standing in for a machine whose disk is full."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def image_bytes(fmt: str, *, seed: int = 0, size: tuple[int, int] = (24, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((*size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 30000) -> bytes:
    """A tiny PNG whose header declares side x side pixels (900M at 30000): a decompression bomb."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + _png_chunk(b"IEND", b"")
    )


def corrupt_middle(data: bytes, fill: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + fill + data[mid + len(fill) :]


# name -> (file name, bytes, words the one-line error must hold)
BAD_IMAGES = {
    "decompression bomb": ("bomb.png", bomb_png(), "DecompressionBombError"),
    "png cut in half": ("half.png", image_bytes("PNG")[: len(image_bytes("PNG")) // 2], "truncated"),
    "jpeg cut in half": ("half.jpg", image_bytes("JPEG")[: len(image_bytes("JPEG")) // 2], "truncated"),
    "jpeg zeroed inside": (
        "zeroed.jpg",
        corrupt_middle(image_bytes("JPEG", size=(64, 80)), b"\0" * 200),
        "corrupt JPEG data",
    ),
    "jpeg early end marker": (
        "eoi.jpg",
        corrupt_middle(image_bytes("JPEG", size=(64, 80)), b"\xff\xd9\0\0"),
        "corrupt JPEG data",
    ),
    "jpeg bad marker": (
        "marker.jpg",
        corrupt_middle(image_bytes("JPEG", size=(64, 80)), b"\xff\x17"),
        "broken data stream",
    ),
    "text named .png": ("text.png", b"id,path,label\n", "cannot identify image"),
    "empty file": ("empty.jpg", b"", "cannot identify image"),
}


def write_manifest(folder: Path, bad: tuple[str, bytes] | None = None, *, good: int = 6) -> tuple[Path, int]:
    """`folder/train.csv` over `good` sound images in 2 classes and, on the returned row, the bad file."""
    img = folder / "img"
    img.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(good):
        name = f"{i}.{'jpg' if i % 2 else 'png'}"
        (img / name).write_bytes(image_bytes("JPEG" if i % 2 else "PNG", seed=i))
        rows.append(f"img/{name},{'ab'[i % 2]}")
    bad_row = 0
    if bad is not None:
        (img / bad[0]).write_bytes(bad[1])
        rows.insert(3, f"img/{bad[0]},a")
        bad_row = 3 + 1  # spreadsheet numbering: the header is row 1
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv", bad_row


def run_python(code: str, *, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter of this venv, from the repository root, with `env` added."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def small_table(path: Path, n: int = 20) -> Path:
    """A valid two-class loss table of `n` rows saved at `path`: the starting point of the hostile-table cases."""
    import numpy as np

    from lossguided.data.manifest import ClassMap
    from lossguided.losstable import LossTable

    LossTable(
        ids=np.arange(n),
        labels=np.arange(n) % 2,
        losses=np.linspace(0, 3, n).astype(np.float32),
        n_records=np.ones(n, np.int32),
        preds=np.zeros(n, np.int64),
        classes=ClassMap(("a", "b")),
        paths=[f"/img/{i}.png" for i in range(n)],
    ).save(path)
    return path
