"""Prediction over a dataset, sharded across ranks and merged by id, and its metrics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lossguided.data.loader import create_loader
from lossguided.data.transforms import BatchTransform
from lossguided.engine.distributed import all_gather_tensors
from lossguided.metrics import classification_metrics


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp: bool = True,
    loader_kwargs: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N] sorted, top-1 class [N]) over `dataset`; every id once, whatever the world size."""
    device = device or next(model.parameters()).device
    transform = BatchTransform().to(device).eval()
    loader = create_loader(dataset, batch_size=batch_size, shuffle=False, **(loader_kwargs or {}))
    was_training = model.training
    model.eval()
    ids_out, preds_out = [], []
    use_amp = amp and device.type == "cuda"
    for images, _, ids in loader:
        x = transform(images.to(device, non_blocking=True))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        ids_out.append(ids.to(device))
        preds_out.append(logits.argmax(1))
    model.train(was_training)
    ids = torch.cat(all_gather_tensors(torch.cat(ids_out))).cpu().numpy()
    preds = torch.cat(all_gather_tensors(torch.cat(preds_out))).cpu().numpy()
    ids, first = np.unique(ids, return_index=True)
    return ids, preds[first]


def evaluate(model: nn.Module, dataset: Dataset, *, class_names: tuple[str, ...], **kwargs) -> dict:
    """Metrics JSON (`mean_top1_error`, `top1_error`, `per_class_error`) of `model` on a labelled dataset."""
    ids, preds = predict(model, dataset, **kwargs)
    order = np.argsort(dataset.ids.numpy() if torch.is_tensor(dataset.ids) else np.asarray(dataset.ids))
    all_ids = np.asarray(dataset.ids)[order]
    labels = np.asarray(dataset.labels)[order]
    if not np.array_equal(all_ids, ids):
        raise RuntimeError("prediction ids do not match the dataset")
    return classification_metrics(labels, preds, class_names=class_names)
