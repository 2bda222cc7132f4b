"""`lossguided ensemble`: combine any number of feature directories into predictions, streamed, never holding the
N x K logits; with a labelled manifest, the same metrics JSON as `lossguided evaluate`."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from lossguided.data.manifest import DataError, Manifest
from lossguided.ensemble.combine import ensemble_topk
from lossguided.ensemble.store import check_compatible, open_features
from lossguided.io import atomic_path
from lossguided.metrics import classification_metrics


def predict_ensemble(
    dirs: Sequence[str | os.PathLike],
    *,
    out_csv: str | os.PathLike | None = None,
    top_k: int = 1,
    fast: bool = True,
    labelled: Manifest | None = None,
    device: str | None = None,
) -> dict:
    """Top-k of sum over models of their logits; writes `id,prediction[,top2,...]` (class names) when asked, and
    returns {'ids', 'top' [N, k] class indices, 'classes', 'metrics' (when `labelled`)}."""
    try:
        sets = [open_features(d) for d in dirs]
        check_compatible(sets)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from None
    if not 1 <= top_k <= len(sets[0].classes):
        raise DataError(f"top-k {top_k} is not in [1, {len(sets[0].classes)}] (the number of classes)")
    idx, _ = ensemble_topk(sets, k=top_k, fast=fast, device=device)
    top = idx.numpy()
    ids = np.asarray(sets[0].ids)
    names = np.array(sets[0].classes, dtype=object)
    if out_csv is not None:
        with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "prediction", *[f"top{j + 1}" for j in range(1, top_k)]])
            for i, row in zip(ids.tolist(), names[top], strict=True):
                w.writerow([i, *row])
    result = {"ids": ids, "top": top, "classes": list(sets[0].classes)}
    if labelled is not None:
        from lossguided.data.manifest import ClassMap

        labelled = labelled.with_classes(ClassMap(tuple(sets[0].classes)))
        pos = labelled.positions_of(ids) if len(labelled) == len(ids) else None
        if pos is None:
            raise DataError(f"{labelled.source}: {len(labelled)} samples, the features hold {len(ids)}")
        result["metrics"] = classification_metrics(labelled.labels[pos], top[:, 0], class_names=labelled.classes.names)
    return result
