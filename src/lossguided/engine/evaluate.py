"""Prediction over a dataset, sharded across ranks and merged by id, and its metrics."""

from __future__ import annotations

import csv
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from lossguided.data.loader import create_loader
from lossguided.data.transforms import PAPER_MEAN, PAPER_STD, BatchTransform
from lossguided.distributed import all_gather_tensors, get_info
from lossguided.metrics import classification_metrics


class Predictions(NamedTuple):
    """Every sample once, sorted by id: `ids` [N], `top` [N, k] class indices (best first), `probs` [N, k]."""

    ids: np.ndarray
    top: np.ndarray
    probs: np.ndarray


@torch.no_grad()
def predict_topk(
    model: nn.Module,
    dataset: Dataset,
    *,
    k: int = 1,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp: bool = True,
    loader_kwargs: dict | None = None,
    progress: bool = False,
    normalization: tuple | None = None,
) -> Predictions:
    """The `k` most likely classes of every sample with their softmax probabilities, whatever the world size."""
    device = device or next(model.parameters()).device
    mean, std = normalization if normalization is not None else (PAPER_MEAN, PAPER_STD)
    transform = BatchTransform(mean=mean, std=std).to(device).eval()
    loader = create_loader(dataset, batch_size=batch_size, shuffle=False, **(loader_kwargs or {}))
    was_training = model.training
    model.eval()
    ids_out, top_out, prob_out = [], [], []
    use_amp = amp and device.type == "cuda"
    bar = tqdm(total=len(dataset), desc="evaluate", unit="img", disable=not (progress and get_info().is_main))
    for images, _, ids in loader:
        x = transform(images.to(device, non_blocking=True))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        probs, top = logits.float().softmax(1).topk(min(k, logits.shape[1]), dim=1)
        ids_out.append(ids.to(device))
        top_out.append(top)
        prob_out.append(probs)
        bar.update(len(ids))
    bar.close()
    model.train(was_training)
    ids = torch.cat(all_gather_tensors(torch.cat(ids_out))).cpu().numpy()
    top = torch.cat(all_gather_tensors(torch.cat(top_out))).cpu().numpy()
    probs = torch.cat(all_gather_tensors(torch.cat(prob_out))).cpu().numpy()
    ids, first = np.unique(ids, return_index=True)  # DistributedSampler pads the last shard: each id once
    return Predictions(ids, top[first], probs[first])


def predict(model: nn.Module, dataset: Dataset, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N] sorted, top-1 class [N]) over `dataset`; every id once, whatever the world size."""
    pred = predict_topk(model, dataset, k=1, **kwargs)
    return pred.ids, pred.top[:, 0]


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    class_names: tuple[str, ...],
    top_k: int = 1,
    predictions_csv: str | os.PathLike | None = None,
    **kwargs,
) -> dict:
    """Metrics JSON (`mean_top1_error`, `top1_error`, `per_class_error`) of `model` on a labelled dataset; with
    `predictions_csv`, also each image's `top_k` classes and probabilities (`id,prediction,top2..,prob,prob2..`)."""
    pred = predict_topk(model, dataset, k=top_k, **kwargs)
    order = np.argsort(dataset.ids.numpy() if torch.is_tensor(dataset.ids) else np.asarray(dataset.ids))
    all_ids = np.asarray(dataset.ids)[order]
    labels = np.asarray(dataset.labels)[order]
    if not np.array_equal(all_ids, pred.ids):
        raise RuntimeError("prediction ids do not match the dataset")
    if predictions_csv is not None and get_info().is_main:
        write_predictions(pred, class_names, predictions_csv)
    return classification_metrics(labels, pred.top[:, 0], class_names=class_names)


def write_predictions(pred: Predictions, class_names: tuple[str, ...], out_csv: str | os.PathLike) -> None:
    """`id,prediction,top2..topk,prob,prob2..probk` (class names, then their probabilities), one row per sample."""
    from lossguided.io import atomic_path, safe_cell

    k = pred.top.shape[1]
    names = np.array(class_names, dtype=object)
    header = ["id", "prediction", *[f"top{j}" for j in range(2, k + 1)], "prob", *[f"prob{j}" for j in range(2, k + 1)]]
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, top, probs in zip(pred.ids.tolist(), names[pred.top], pred.probs, strict=True):
            w.writerow([i, *(safe_cell(c) for c in top), *(f"{p:.6g}" for p in probs)])
