"""Post-hoc logit adjustment (Menon et al., 2021): predict argmax_c (logit_c - tau * log prior_c), where the prior is
the class share of the training list. Why: the capped clean list is still long-tailed (about 17:1 in the built-in
benchmark) while the metric averages each class's error, so a model trained on it leans toward its head classes.
It needs only class counts, so it works at 50,030 classes, and it folds into the classifier's bias: the shipped
checkpoint is a plain model whose argmax is the adjusted one. tau is chosen on a labelled split (the smallest tau
among the lowest errors, so a flat curve keeps the model as it is); every tau is scored in one pass over it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lossguided.data.loader import create_loader
from lossguided.data.transforms import BatchTransform

TAUS = tuple(float(t) for t in np.round(np.arange(0.0, 2.01, 0.25), 2))


def log_prior(counts: np.ndarray) -> np.ndarray:
    """[K] log of each class's share of the training list (a class with no sample counts as one)."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return np.log(counts / counts.sum())


@torch.no_grad()
def predictions_by_tau(
    model: nn.Module,
    dataset: Dataset,
    prior: np.ndarray,
    *,
    taus: tuple[float, ...] = TAUS,
    normalization: tuple | None = None,
    batch_size: int = 256,
    loader_kwargs: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], predictions [len(taus), N]) of `model` on a labelled dataset under each tau; memory O(N x taus),
    never N x K."""
    device = next(model.parameters()).device
    mean, std = normalization if normalization is not None else (None, None)
    transform = (BatchTransform() if mean is None else BatchTransform(mean=mean, std=std)).to(device).eval()
    shift = torch.tensor(np.asarray(taus)[:, None] * prior[None, :], dtype=torch.float32, device=device)  # [T, K]
    loader = create_loader(dataset, batch_size=batch_size, shuffle=False, **(loader_kwargs or {}))
    was_training = model.training
    model.eval()
    labels_out, preds_out = [], []
    for images, labels, _ in loader:
        logits = model(transform(images.to(device, non_blocking=True))).float()  # [B, K]
        preds_out.append((logits[None] - shift[:, None, :]).argmax(2).cpu())  # [T, B]
        labels_out.append(labels.cpu())
    model.train(was_training)
    return torch.cat(labels_out).numpy(), torch.cat(preds_out, dim=1).numpy()


def mean_error(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    counts = np.bincount(labels, minlength=num_classes)
    wrong = np.bincount(labels, weights=labels != preds, minlength=num_classes)
    present = counts > 0
    return float((wrong[present] / counts[present]).mean())


def choose_tau(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, taus: tuple[float, ...] = TAUS
) -> tuple[float, dict[float, float]]:
    """The tau of the lowest mean top-1 error (ties: the smallest), and every tau's error."""
    errors = {t: mean_error(labels, p, num_classes) for t, p in zip(taus, preds, strict=True)}
    best = min(errors.values())
    return min(t for t, e in errors.items() if e <= best + 1e-12), errors


def fold_into_head(model: nn.Module, tau: float, prior: np.ndarray) -> None:
    """bias_c -= tau * log prior_c on the model's linear classifier, in place (a bias is added where it has none)."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"logit adjustment folds into a linear classifier, this model has {type(head).__name__}")
    shift = torch.as_tensor(tau * prior, dtype=head.weight.dtype, device=head.weight.device)
    with torch.no_grad():
        if head.bias is None:
            head.bias = nn.Parameter(torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device))
        head.bias.sub_(shift)
