"""Writing WebDataset shards (`lossguided preprocess --format webdataset`) from any manifest: the images decoded,
resized and re-encoded as JPEG, grouped into plain tar shards that any WebDataset reader reads, each with the offsets
index that `data.webdataset` reads them by. Resumable: each finished shard is recorded in `webdataset.partial.json`,
so the same command after a crash, Ctrl-C or a fixed bad image writes only the shards still missing."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm import tqdm

from lossguided.data.encode import (
    BAD_LIST,
    Encoder,
    claim_output_folder,
    fingerprint,
    identity,
    sample_names,
    write_bad_list,
)
from lossguided.data.manifest import DataError, Manifest
from lossguided.data.webdataset import CLASSES_FILE, shard_index
from lossguided.io import disk_errors, write_json

log = logging.getLogger("lossguided")

DONE = "webdataset.json"  # written last: the folder is complete
PARTIAL = "webdataset.partial.json"  # the settings and the shards finished so far (with their skipped rows)


def write_webdataset(
    manifest: Manifest,
    out_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    quality: int = 90,
    subsampling: str = "4:2:0",
    shard_size: int = 10_000,
    workers: int = 0,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> dict:
    """Write `manifest`'s images, decoded, resized to image_size and re-encoded as JPEG, into WebDataset shards
    `out_dir/shard-000000.tar`, ... (`<id>.jpg`, `<id>.cls` class index, `<id>.json` label name, id, original path
    [, true_label]) with `classes.json` and each shard's offsets index beside them. Each shard is written to a
    temporary name and renamed; `webdataset.json` is written last. The same command on a complete folder returns at
    once, on an interrupted one writes the missing shards only; other settings in a non-empty folder are an error.
    An image that cannot be decoded stops the run naming it, or with `skip_bad_images` is left out and listed in
    `bad_images.csv`."""
    if image_size < 1 or shard_size < 1 or not 1 <= quality <= 100:
        raise ValueError("image_size and shard_size must be positive and quality in 1..100")
    out = Path(out_dir)
    paths = sample_names(manifest)
    settings = {
        "format": "webdataset",
        "image_size": image_size,
        "quality": quality,
        "subsampling": subsampling,
        "shard_size": shard_size,
        "rows": len(manifest),
        "fingerprint": fingerprint(manifest, paths),
    }
    finished_write = claim_output_folder(out, settings, done=out / DONE, plan=out / PARTIAL, what="WebDataset shards")
    if finished_write is not None:
        return finished_write["summary"]
    finished = _finished_shards(out)
    names = manifest.classes.names
    write_json(out / CLASSES_FILE, list(names))
    encoder = Encoder(
        manifest, paths, image_size=image_size, storage="jpeg-shards", quality=quality, subsampling=subsampling
    )
    workers = max(0, min(workers, os.cpu_count() or 1))
    todo = [r for r in range(len(manifest)) if str(r // shard_size) not in finished]
    if finished:
        log.info("%s: resuming: %d shard(s) already written, %d images to go", out, len(finished), len(todo))
    loader = DataLoader(
        encoder,
        batch_size=None,
        sampler=todo,
        num_workers=workers,
        collate_fn=identity,
        prefetch_factor=8 if workers else None,
    )
    bar = tqdm(total=len(todo), unit="img", desc=f"webdataset {out.name}", disable=not progress)
    bad: list[tuple[int, str]] = [(row, error) for shard in finished.values() for row, error in shard["bad"]]
    shards, tar, current = [], None, -1

    def close() -> None:
        """Finish the open shard and record it (with the rows it skipped) as done."""
        _close_shard(tar, shards[-1])
        finished[str(current)] = {
            "file": shards[-1].name,
            "bad": [[r, e] for r, e in bad if r // shard_size == current],
        }
        write_json(out / PARTIAL, {**settings, "shards": finished})

    try:
        with disk_errors(out):
            for row, payload, error in loader:
                bar.update()
                if error is not None:
                    if not skip_bad_images:
                        raise DataError(f"{error}; fix or remove it, or pass --skip-bad-images to leave it out")
                    bad.append((row, error))
                    continue
                if tar is None or row // shard_size != current:
                    if tar is not None:
                        close()
                    current = row // shard_size
                    shards.append(out / f"shard-{current:06d}.tar")
                    tar = tarfile.open(shards[-1].with_name(f".{shards[-1].name}.tmp"), "w", format=tarfile.GNU_FORMAT)
                key = f"{int(manifest.ids[row]):09d}"
                meta = {"label": names[manifest.labels[row]], "id": int(manifest.ids[row]), "path": paths[row]}
                if manifest.true_labels is not None:
                    meta["true_label"] = names[manifest.true_labels[row]]
                _add(tar, f"{key}.jpg", payload)
                _add(tar, f"{key}.cls", str(int(manifest.labels[row])).encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
            if tar is not None:
                close()
                tar = None
    finally:
        bar.close()
        if tar is not None:
            tar.close()
            Path(tar.name).unlink(missing_ok=True)
    shards = [out / shard["file"] for _, shard in sorted(finished.items(), key=lambda kv: int(kv[0]))]
    if not shards:
        raise DataError(f"{manifest.source}: no image could be decoded; see {out / BAD_LIST}")
    bad.sort()
    if bad:
        write_bad_list(out / BAD_LIST, manifest, paths, bad)
    nbytes = sum(path.stat().st_size for path in shards)
    summary = {
        "out": str(out),
        "storage": "webdataset",
        "image_size": image_size,
        "shards": len(shards),
        "samples": len(manifest) - len(bad),
        "skipped": len(bad),
        "bytes": int(nbytes),
        "bytes_per_image": round(nbytes / max(1, len(manifest) - len(bad)), 1),
    }
    if bad:
        summary["bad_images"] = str(out / BAD_LIST)
    write_json(out / DONE, {**settings, "summary": summary})
    (out / PARTIAL).unlink(missing_ok=True)
    return summary


def _finished_shards(out: Path) -> dict[str, dict]:
    """The shards an interrupted write of the same input and settings finished and recorded in its plan."""
    shards = json.loads((out / PARTIAL).read_text()).get("shards", {})
    return {i: shard for i, shard in shards.items() if (out / shard["file"]).is_file()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _close_shard(tar: tarfile.TarFile, final: Path) -> int:
    """Finish a shard: close, fsync, rename into place, and build its offsets index now (one read of a file still
    in the page cache)."""
    tar.close()
    with open(tar.name, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tar.name, final)
    shard_index(final)
    return final.stat().st_size
