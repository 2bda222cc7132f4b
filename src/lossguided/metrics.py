"""The AliProducts metric: mean top-1 error averaged per class (each class's error, then the mean over the classes
present), beside the plain per-image top-1 error and each class's error."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, preds: np.ndarray, *, class_names: tuple[str, ...]) -> dict:
    """labels, preds: [N] class indices -> {'mean_top1_error', 'top1_error', 'per_class_error', 'n'}."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} must be the same 1-D shape")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    k = len(class_names)
    wrong = (labels != preds).astype(np.float64)
    counts = np.bincount(labels, minlength=k)
    errors = np.bincount(labels, weights=wrong, minlength=k)
    present = counts > 0
    per_class = errors[present] / counts[present]
    return {
        "mean_top1_error": float(per_class.mean()),
        "top1_error": float(wrong.mean()),
        "per_class_error": {class_names[c]: float(e) for c, e in zip(np.flatnonzero(present), per_class, strict=True)},
        "n": int(len(labels)),
    }


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of `scores` ranking `positives` first (ties count half); NaN without both kinds."""
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank within ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
