"""What a clean fine-tune does with the classifier it inherits (`finetune.head`). Why: the pre-trained model has
partly memorised the wrong labels, and most of that memory sits in the last layer, which maps a look-alike's
features onto the label it was filed under. "reset" draws the classifier anew (timm's `reset_classifier`); "imprint"
sets each class's weight row to the mean feature of its kept samples (unit length, at the old rows' mean norm, zero
bias), so the fine-tune starts from the clean list's own class centres instead of from the noisy head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lossguided.config import HEAD_MODES
from lossguided.data.transforms import BatchTransform


def prepare_head(
    model: nn.Module,
    mode: str,
    *,
    dataset: Dataset | None = None,
    num_classes: int,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    batch_size: int = 256,
) -> None:
    """Apply `mode` to `model`'s classifier in place (keep: nothing). imprint needs the training `dataset` (batches
    of (uint8 images, labels, ids) from `__getitems__`) and the model's input normalization."""
    if mode not in HEAD_MODES:
        raise ValueError(f"head mode {mode!r} is not one of {HEAD_MODES}")
    if mode == "keep":
        return
    head = model.get_classifier()
    if mode == "reset" or dataset is None:
        if mode == "imprint":
            raise ValueError("head 'imprint' needs the training samples")
        model.reset_classifier(num_classes)
        return
    if not isinstance(head, nn.Linear):
        raise ValueError(f"head 'imprint' needs a linear classifier, this model has {type(head).__name__}")
    centres = class_means(model, dataset, num_classes=num_classes, normalization=normalization, batch_size=batch_size)
    with torch.no_grad():
        scale = head.weight.norm(dim=1).mean()
        norms = centres.norm(dim=1, keepdim=True)
        rows = torch.where(norms > 0, centres / norms.clamp_min(1e-12) * scale, head.weight)  # absent class: kept
        head.weight.copy_(rows)
        if head.bias is not None:
            head.bias.zero_()


@torch.no_grad()
def class_means(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """[K, D] mean pre-logit feature of each class's samples (zeros for a class without any), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mean, std = normalization if normalization is not None else (None, None)
    transform = (BatchTransform() if mean is None else BatchTransform(mean=mean, std=std)).to(device).eval()
    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
    n = len(dataset)
    for start in range(0, n, batch_size):
        index = list(range(start, min(start + batch_size, n)))
        if hasattr(dataset, "__getitems__"):
            images, labels, _ = dataset.__getitems__(index)
        else:  # a map-style dataset of (image, label, id) items
            items = [dataset[i] for i in index]
            images = torch.stack([torch.as_tensor(it[0]) for it in items])
            labels = [int(it[1]) for it in items]
        feats = model.forward_head(model.forward_features(transform(images.to(device))), pre_logits=True)
        feats = feats.double().cpu()
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if sums is None:
            sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64)
        sums.index_add_(0, labels, feats)
        counts += torch.bincount(labels, minlength=num_classes).double()
    model.train(was_training)
    if sums is None:
        raise ValueError("no samples to imprint the classifier from")
    return (sums / counts.clamp_min(1).unsqueeze(1)).float()
