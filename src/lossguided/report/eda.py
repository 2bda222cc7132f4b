"""`lossguided eda`: what a training manifest looks like before any training (the paper's section 1): how long the
class tail is, how image sizes vary, which files are exact duplicates, which images are missing.

Numbers come from pure functions over arrays; `run_eda` scans the images (headers and bytes only, never decoding
pixels) and writes OUT/eda.json, OUT/class_counts.csv, OUT/duplicates.csv, OUT/missing.csv (when any), and the
figures OUT/class_frequency.png and OUT/image_sizes.png.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lossguided.data.manifest import Manifest
from lossguided.data.sources import bytes_by_name
from lossguided.io import atomic_path, safe_cell, write_json
from lossguided.layout import csv_path
from lossguided.report import figures
from lossguided.report.images import _no_bar, array_digest, file_digest, header_size

HEAD_FRACTION = 0.1  # the head: the largest 10% of classes
TAIL_FRACTION = 0.5  # the tail: the smallest half of the classes


# -- pure summaries ---------------------------------------------------------------------------------------------
def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Images per class index [K]."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)


def imbalance_summary(
    counts: np.ndarray,
    names: Sequence[str],
    *,
    head_fraction: float = HEAD_FRACTION,
    tail_fraction: float = TAIL_FRACTION,
    listed: int = 10,
) -> dict:
    """Classes, images, imbalance ratio (largest / smallest non-empty class), head and tail shares of the images,
    and the smallest and largest classes (ties by name order)."""
    counts = np.asarray(counts, dtype=np.int64)
    k, n = len(counts), int(counts.sum())
    order = np.lexsort((np.arange(k), -counts))  # largest first, ties by class index
    sorted_counts = counts[order]
    nonempty = counts[counts > 0]
    head_k = max(1, round(k * head_fraction)) if k else 0
    tail_k = max(1, round(k * tail_fraction)) if k > 1 else 0
    share = (lambda c: float(c.sum() / n)) if n else (lambda c: 0.0)  # noqa: E731
    small = order[::-1][:listed]
    return {
        "classes": k,
        "images": n,
        "empty_classes": int((counts == 0).sum()),
        "imbalance_ratio": float(nonempty.max() / nonempty.min()) if len(nonempty) else None,
        "largest_class_images": int(sorted_counts[0]) if k else 0,
        "smallest_class_images": int(sorted_counts[-1]) if k else 0,
        "median_class_images": float(np.median(counts)) if k else 0.0,
        "head": {"classes": head_k, "share_of_images": share(sorted_counts[:head_k])},
        "tail": {"classes": tail_k, "share_of_images": share(sorted_counts[k - tail_k :]) if tail_k else 0.0},
        "classes_under_5_images": int((counts < 5).sum()),
        "smallest_classes": [{"class": names[i], "images": int(counts[i])} for i in small],
        "largest_classes": [{"class": names[i], "images": int(counts[i])} for i in order[:listed]],
    }


def size_summary(widths: np.ndarray, heights: np.ndarray) -> dict:
    """Percentiles (0, 5, 50, 95, 100) of width, height and aspect ratio w/h over the readable images."""
    if len(widths) == 0:
        return {"readable": 0}
    q = [0, 5, 50, 95, 100]

    def pct(v):
        return dict(
            zip(
                ("min", "p5", "median", "p95", "max"),
                np.percentile(v, q).round(4).tolist(),
                strict=True,
            )
        )

    aspect = widths / np.maximum(heights, 1)
    return {
        "readable": int(len(widths)),
        "width": pct(widths),
        "height": pct(heights),
        "aspect_w_over_h": pct(aspect),
        "distinct_sizes": int(len({(int(w), int(h)) for w, h in zip(widths, heights, strict=True)})),
        "share_portrait": float((aspect < 1).mean()),
        "share_landscape": float((aspect > 1).mean()),
    }


def duplicate_groups(digests: Sequence[str | None]) -> list[np.ndarray]:
    """Positions of identical contents, one array per digest seen at least twice (None = unreadable, skipped);
    largest groups first, then by first position."""
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d is not None:
            by_digest.setdefault(d, []).append(i)
    groups = [np.array(v) for v in by_digest.values() if len(v) > 1]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


# -- scanning ---------------------------------------------------------------------------------------------------
@dataclass
class ImageScan:
    """Per sample: width and height (-1 when unreadable), content digest (None when unreadable), and why not."""

    widths: np.ndarray
    heights: np.ndarray
    digests: list[str | None]
    problems: dict[int, str]  # position -> "missing" | "unreadable"


def scan_images(manifest: Manifest, *, workers: int = 4, progress: bool | None = None) -> ImageScan:
    """Header sizes and content hashes of every image (files: bytes and header only; in-memory: array shape and
    pixel bytes)."""
    n = len(manifest)
    disable = _no_bar(progress, n)
    if manifest.images is not None:
        images = manifest.images
        h, w = images.shape[1], images.shape[2]
        digests = [array_digest(images[i]) for i in tqdm(range(n), desc="hashing", unit="img", disable=disable)]
        return ImageScan(np.full(n, w), np.full(n, h), digests, {})

    def one(path: str) -> tuple[tuple[int, int] | None, str | None, str | None]:
        if not os.path.isfile(path):
            data = bytes_by_name(path)  # a sample inside a file (a WebDataset shard's `<shard>.tar#<key>`)
            if data is None:
                return None, None, "missing"
            size = header_size(io.BytesIO(data))
            return size, hashlib.sha1(data).hexdigest(), None if size else "unreadable"
        size = header_size(path)
        return size, file_digest(path), None if size else "unreadable"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, manifest.paths), total=n, desc="scanning", unit="img", disable=disable))
    widths = np.array([r[0][0] if r[0] else -1 for r in results], dtype=np.int64)
    heights = np.array([r[0][1] if r[0] else -1 for r in results], dtype=np.int64)
    problems = {i: r[2] for i, r in enumerate(results) if r[2]}
    return ImageScan(widths, heights, [r[1] for r in results], problems)


# -- the command ------------------------------------------------------------------------------------------------
def run_eda(
    manifest: Manifest, out_dir: str | os.PathLike, *, workers: int = 4, progress: bool | None = None, listed: int = 10
) -> dict:
    """Scan `manifest`, write the figures, tables and OUT/eda.json; returns the JSON's content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = manifest.classes.names
    counts = class_counts(manifest.labels, len(names))
    summary = imbalance_summary(counts, names, listed=listed)
    scan = scan_images(manifest, workers=workers, progress=progress)
    ok = scan.widths >= 0
    groups = duplicate_groups(scan.digests)
    paths = _display_paths(manifest)

    order = np.lexsort((np.arange(len(counts)), -counts))
    _write_rows(
        out / "class_counts.csv",
        ["rank", "class", "images", "share", "cumulative_share"],
        _count_rows(counts, order, names),
    )
    conflicts = sum(1 for g in groups if len(set(manifest.labels[g].tolist())) > 1)
    dup_rows = [
        [
            gi + 1,
            int(manifest.ids[p]),
            paths[p],
            names[manifest.labels[p]],
            scan.digests[p],
            int(len(set(manifest.labels[g].tolist())) > 1),
        ]
        for gi, g in enumerate(groups)
        for p in g
    ]
    _write_rows(out / "duplicates.csv", ["group", "id", "path", "label", "sha1", "labels_differ"], dup_rows)
    missing_path = out / "missing.csv"
    if scan.problems:
        rows = [
            [int(manifest.ids[p]), _row_of(manifest, p), paths[p], names[manifest.labels[p]], why]
            for p, why in sorted(scan.problems.items())
        ]
        _write_rows(missing_path, ["id", "row", "path", "label", "problem"], rows)
    elif missing_path.exists():
        missing_path.unlink()  # a rerun after fixing the data must not keep a stale list

    sorted_counts = counts[order]
    (out / "class_frequency.png").write_bytes(
        figures.class_frequency(
            sorted_counts,
            head_classes=summary["head"]["classes"],
            head_share=summary["head"]["share_of_images"],
            tail_classes=summary["tail"]["classes"],
            tail_share=summary["tail"]["share_of_images"],
            names=[names[c] for c in order],
        )
    )
    (out / "image_sizes.png").write_bytes(figures.image_sizes(scan.widths[ok], scan.heights[ok]))

    result = {
        "source": manifest.source,
        **summary,
        "image_sizes": {
            "read_from": "array shape" if manifest.images is not None else "image headers",
            **size_summary(scan.widths[ok], scan.heights[ok]),
        },
        "duplicates": {
            "groups": len(groups),
            "files_in_groups": int(sum(len(g) for g in groups)),
            "extra_copies": int(sum(len(g) - 1 for g in groups)),
            "groups_with_different_labels": conflicts,
            "examples": [[paths[p] for p in g[:5]] for g in groups[:listed]],
        },
        "missing_images": {
            "count": sum(1 for v in scan.problems.values() if v == "missing"),
            "unreadable": sum(1 for v in scan.problems.values() if v == "unreadable"),
            "examples": [paths[p] for p in sorted(scan.problems)[:listed]],
        },
        "files": {
            name: str(out / name)
            for name in ("class_counts.csv", "duplicates.csv", "class_frequency.png", "image_sizes.png")
        },
    }
    if scan.problems:
        result["files"]["missing.csv"] = str(missing_path)
    write_json(out / "eda.json", result)
    return result


def format_summary(result: dict) -> str:
    """A few lines for the terminal."""
    ratio = result["imbalance_ratio"]
    lines = [
        f"{result['source']}: {result['images']:,} images in {result['classes']:,} classes; imbalance ratio "
        f"{'-' if ratio is None else f'{ratio:.1f}'} (largest {result['largest_class_images']:,}, smallest "
        f"{result['smallest_class_images']:,}, median {result['median_class_images']:g})",
        f"head: the largest {result['head']['classes']:,} class(es) hold {result['head']['share_of_images']:.1%} of "
        f"images; tail: the smallest {result['tail']['classes']:,} hold {result['tail']['share_of_images']:.1%}",
        "smallest classes: " + ", ".join(f"{c['class']} ({c['images']})" for c in result["smallest_classes"][:5]),
    ]
    sizes = result["image_sizes"]
    if sizes.get("readable"):
        w, h = sizes["width"], sizes["height"]
        lines.append(
            f"image sizes ({sizes['read_from']}): width {w['min']:g}-{w['max']:g} (median {w['median']:g}), "
            f"height {h['min']:g}-{h['max']:g} (median {h['median']:g}), "
            f"{sizes['distinct_sizes']:,} distinct sizes"
        )
    d = result["duplicates"]
    lines.append(
        f"duplicates: {d['groups']:,} groups of identical files ({d['extra_copies']:,} extra copies, "
        f"{d['groups_with_different_labels']:,} with different labels)"
    )
    m = result["missing_images"]
    if m["count"] or m["unreadable"]:
        lines.append(
            f"PROBLEM: {m['count']:,} missing and {m['unreadable']:,} unreadable images, e.g. "
            f"{m['examples'][:3]} (see missing.csv)"
        )
    return "\n".join(lines)


def _display_paths(manifest: Manifest) -> list[str]:
    if manifest.paths is not None:
        return [csv_path(p) for p in manifest.paths]  # absolute, as in every CSV the tool writes
    return [f"{manifest.source}#{int(i)}" for i in manifest.ids]


def _row_of(manifest: Manifest, pos: int) -> int | str:
    return int(manifest.rows[pos]) if manifest.rows is not None else ""


def _count_rows(counts: np.ndarray, order: np.ndarray, names: Sequence[str]) -> list[list]:
    total = max(int(counts.sum()), 1)
    cum = np.cumsum(counts[order]) / total
    return [
        [r + 1, names[c], int(counts[c]), round(counts[c] / total, 6), round(float(cum[r]), 6)]
        for r, c in enumerate(order)
    ]


def _write_rows(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([safe_cell(c) for c in r] for r in rows)  # class names and paths: no spreadsheet formulas


def load_manifest_for_eda(spec: str, options: Mapping[str, Any] | None = None) -> Manifest:
    """Like `load_manifest` (`options`: data settings by name), but a CSV whose images are missing still loads: eda
    lists them instead of stopping."""
    from lossguided.data.manifest import read_csv
    from lossguided.data.sources import load_manifest

    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path, check_files=False)
    return load_manifest(spec, split="train", options=options)
