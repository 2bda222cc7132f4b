"""Feature extraction for ensembling (paper section 3.5-3.6): each image's pre-classifier features, summed over its
test-time-augmented views, written chunk by chunk into a resumable feature directory with the model's linear head.

Under torchrun every rank computes a contiguous part of each chunk; rank 0 gathers the parts in order and writes,
so the result is one complete, ordered file whatever the world size. Each rank decodes its images in DataLoader
workers (one loader over all of its rows, in order) and runs the model on its GPU when there is one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from lossguided.data.manifest import DataError, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.transforms import PAPER_MEAN, PAPER_STD, TTA_VIEWS, BatchTransform, saved_normalization
from lossguided.distributed import all_gather_objects, barrier, default_device, get_info
from lossguided.engine import checkpoint
from lossguided.ensemble.store import FeatureSet, FeatureWriter, open_features
from lossguided.models import classifier_weights, load_model, pre_logits

log = logging.getLogger("lossguided")


def _passthrough(batch):
    """Datasets with `__getitems__` return a collated (images, labels, ids) batch already."""
    return batch


class _Features:
    """Summed-over-views pre-logits of dataset rows, taken in `order` from one DataLoader: `take(n)` returns the next
    n rows' features, [n, D] float32 on the CPU. Batches may straddle chunks; what is left over waits for the next."""

    def __init__(
        self,
        model: torch.nn.Module,
        dataset,
        order: np.ndarray,
        *,
        tta: str,
        batch_size: int,
        device: torch.device,
        workers: int,
        normalization: tuple = (PAPER_MEAN, PAPER_STD),
    ) -> None:
        self.model, self.device, self.views = model, device, TTA_VIEWS[tta]
        mean, std = normalization
        self.transform = BatchTransform(mean=mean, std=std).to(device).eval()
        in_memory = hasattr(dataset, "__getitems__")
        workers = 0 if in_memory or len(order) < 4 * batch_size else min(workers, os.cpu_count() or 1)
        loader = DataLoader(
            Subset(dataset, order),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_passthrough if in_memory else None,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        self.batches = iter(loader)
        self.left = torch.empty(0)

    @torch.no_grad()
    def take(self, n: int) -> torch.Tensor:
        parts, have = [self.left], len(self.left)
        while have < n:
            images = next(self.batches)[0].to(self.device, non_blocking=True)
            x = self.transform(images)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                feats = sum(pre_logits(self.model, v).float() for v in self.views(x)).cpu()
            parts.append(feats)
            have += len(feats)
        out = torch.cat(parts) if have else torch.empty(0)
        self.left = out[n:]
        return out[:n]


def extract_features(
    checkpoint_path: str | os.PathLike,
    manifest: Manifest,
    out_dir: str | os.PathLike,
    *,
    tta: str = "hflip",
    dtype: str = "float16",
    image_size: int | None = None,
    batch_size: int = 128,
    chunk_rows: int = 4096,
    workers: int = 4,
) -> FeatureSet:
    """Write `out_dir` (features [N, D] in manifest order, ids, head, meta); resumes an interrupted extraction.
    `workers`: DataLoader workers decoding this rank's images."""
    if tta not in TTA_VIEWS:
        raise ValueError(f"tta {tta!r} is not one of {sorted(TTA_VIEWS)}")
    info = get_info()
    state = checkpoint.load(checkpoint_path)
    classes = checkpoint.classes_of(state)
    manifest = manifest.with_classes(classes)
    cfg = state.get("config") or {}
    size = image_size or cfg.get("data", {}).get("image_size", 256)
    name = state.get("model_name") or cfg.get("model", {}).get("name")
    device = default_device(info)
    model, _ = load_model(state, device=device)  # the one place a checkpoint becomes a model
    weight, bias = classifier_weights(model)
    n_views = len(TTA_VIEWS[tta](torch.zeros(1, 3, 2, 2)))
    if (Path(out_dir) / "meta.json").is_file() and _is_complete(out_dir):  # finished earlier: reuse if the same
        return _same_extraction(
            open_features(out_dir),
            tta=tta,
            dtype=dtype,
            model=name,
            ids=manifest.ids,
            weight=weight,
            bias=bias,
            image_size=size,
        )
    writer, error = None, None
    if info.is_main:
        try:
            writer = FeatureWriter.create(
                out_dir,
                n_rows=len(manifest),
                weight=weight.cpu().numpy(),
                bias=bias.cpu().numpy(),
                classes=classes.names,
                n_views=n_views,
                tta=tta,
                model=name,
                dtype=dtype,
                chunk_rows=chunk_rows,
                extra={"checkpoint": str(checkpoint_path), "image_size": size},
            )
        except ValueError as e:  # an interrupted extraction of other settings
            error = str(e)
    start, error = all_gather_objects((writer.rows_done if writer else None, error))[0]
    if error:  # every rank stops, not only the one that found it
        raise DataError(f"{error}; remove the folder or use another --out")
    if start and info.is_main:
        log.info("resuming feature extraction of %s at row %d of %d", out_dir, start, len(manifest))
    dataset = make_dataset(manifest, image_size=size)
    bar = tqdm(total=len(manifest), initial=start, desc="features", disable=not info.is_main, file=None)
    chunks = [np.arange(c, min(c + chunk_rows, len(manifest))) for c in range(start, len(manifest), chunk_rows)]
    mine = [np.array_split(rows, info.world_size)[info.rank] for rows in chunks]
    order = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    features = _Features(
        model,
        dataset,
        order,
        tta=tta,
        batch_size=batch_size,
        device=device,
        workers=workers,
        normalization=saved_normalization(state),
    )
    for rows, my_rows in zip(chunks, mine, strict=True):
        chunk_start = int(rows[0])
        parts = all_gather_objects(features.take(len(my_rows)))
        if info.is_main:
            writer.write_chunk(chunk_start, torch.cat([p for p in parts if p.numel()]).numpy(), manifest.ids[rows])
        bar.update(len(rows))
    bar.close()
    if info.is_main:
        writer.finish()
    barrier()
    return open_features(out_dir)


def _same_extraction(
    fs: FeatureSet,
    *,
    tta: str,
    dtype: str,
    model: str,
    ids: np.ndarray,
    weight: torch.Tensor,
    bias: torch.Tensor,
    image_size: int,
) -> FeatureSet:
    """A finished folder answers a request only if it was made the same way from the same model and images."""
    asked = {"tta": tta, "dtype": dtype, "model": model, "image_size": image_size}
    differ = [f"{k}={fs.meta.get(k)!r} (asked {v!r})" for k, v in asked.items() if fs.meta.get(k) != v]
    if not np.array_equal(np.asarray(fs.ids), ids):
        differ.append("other image ids")
    if not (np.array_equal(fs.weight, weight.cpu().numpy()) and np.array_equal(fs.bias, bias.cpu().numpy())):
        differ.append("another checkpoint's classifier")
    if differ:
        raise DataError(f"{fs.path}: holds finished features with {', '.join(differ)}; remove it or use another --out")
    return fs


def _is_complete(out_dir: str | os.PathLike) -> bool:
    import json

    return bool(json.loads((Path(out_dir) / "meta.json").read_text()).get("complete"))
