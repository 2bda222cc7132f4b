"""Feature extraction for ensembling (paper section 3.5-3.6): each image's pre-classifier features, summed over its
test-time-augmented views, written chunk by chunk into a resumable feature directory with the model's linear head.

Under torchrun every rank computes a contiguous part of each chunk; rank 0 gathers the parts in order and writes,
so the result is one complete, ordered file whatever the world size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lossguided.data.datasets import make_dataset
from lossguided.data.manifest import DataError, Manifest
from lossguided.data.transforms import TTA_VIEWS, BatchTransform
from lossguided.engine import checkpoint
from lossguided.engine.distributed import all_gather_objects, barrier, default_device, get_info
from lossguided.ensemble.store import FeatureSet, FeatureWriter, open_features
from lossguided.models import classifier_weights, create_model, pre_logits

log = logging.getLogger("lossguided")


@torch.no_grad()
def _features(model: torch.nn.Module, dataset, rows: np.ndarray, *, tta: str, batch_size: int,
              device: torch.device) -> torch.Tensor:  # fmt: skip
    """Summed-over-views pre-logits of dataset rows, [len(rows), D] float32 on the CPU."""
    transform = BatchTransform().to(device).eval()
    views = TTA_VIEWS[tta]
    out = []
    for s in range(0, len(rows), batch_size):
        batch = [dataset[int(i)] for i in rows[s : s + batch_size]]
        images = torch.stack([b[0] for b in batch]).to(device)
        x = transform(images)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats = sum(pre_logits(model, v).float() for v in views(x))
        out.append(feats.cpu())
    return torch.cat(out) if out else torch.empty(0)


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
) -> FeatureSet:
    """Write `out_dir` (features [N, D] in manifest order, ids, head, meta); resumes an interrupted extraction."""
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
    model = create_model(name, num_classes=len(classes))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    weight, bias = classifier_weights(model)
    n_views = len(TTA_VIEWS[tta](torch.zeros(1, 3, 2, 2)))
    if (Path(out_dir) / "meta.json").is_file() and _is_complete(out_dir):  # finished earlier: reuse if the same
        return _same_extraction(open_features(out_dir), tta=tta, dtype=dtype, model=name, ids=manifest.ids,
                                weight=weight, bias=bias, image_size=size)  # fmt: skip
    writer, error = None, None
    if info.is_main:
        try:
            writer = FeatureWriter.create(out_dir, n_rows=len(manifest), weight=weight.cpu().numpy(),
                                          bias=bias.cpu().numpy(), classes=classes.names, n_views=n_views, tta=tta,
                                          model=name, dtype=dtype, chunk_rows=chunk_rows,
                                          extra={"checkpoint": str(checkpoint_path), "image_size": size})  # fmt: skip
        except ValueError as e:  # an interrupted extraction of other settings
            error = str(e)
    start, error = all_gather_objects((writer.rows_done if writer else None, error))[0]
    if error:  # every rank stops, not only the one that found it
        raise DataError(f"{error}; remove the folder or use another --out")
    if start and info.is_main:
        log.info("resuming feature extraction of %s at row %d of %d", out_dir, start, len(manifest))
    dataset = make_dataset(manifest, image_size=size)
    bar = tqdm(total=len(manifest), initial=start, desc="features", disable=not info.is_main, file=None)
    for chunk_start in range(start, len(manifest), chunk_rows):
        rows = np.arange(chunk_start, min(chunk_start + chunk_rows, len(manifest)))
        mine = np.array_split(rows, info.world_size)[info.rank]
        parts = all_gather_objects(_features(model, dataset, mine, tta=tta, batch_size=batch_size, device=device))
        if info.is_main:
            writer.write_chunk(chunk_start, torch.cat([p for p in parts if p.numel()]).numpy(), manifest.ids[rows])
        bar.update(len(rows))
    bar.close()
    if info.is_main:
        writer.finish()
    barrier()
    return open_features(out_dir)


def _same_extraction(fs: FeatureSet, *, tta: str, dtype: str, model: str, ids: np.ndarray, weight: torch.Tensor,
                     bias: torch.Tensor, image_size: int) -> FeatureSet:  # fmt: skip
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
