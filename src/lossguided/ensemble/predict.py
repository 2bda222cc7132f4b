"""`lossguided ensemble`: combine any number of feature directories into predictions, streamed, never holding the
N x K logits; with a labelled manifest, the same metrics JSON as `lossguided evaluate`.

It runs on this rank's GPU when there is one. Under torchrun only rank 0 computes (and writes); the others receive its
result, so the ensemble is neither run once per rank nor held once per rank in GPU memory."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from lossguided.data.manifest import DataError, Manifest
from lossguided.distributed import broadcast_object, default_device, get_info
from lossguided.ensemble.combine import ensemble_topk
from lossguided.ensemble.store import check_compatible, open_features
from lossguided.io import atomic_path
from lossguided.metrics import classification_metrics


def predict_ensemble(
    dirs: Sequence[str | os.PathLike],
    *,
    out_csv: str | os.PathLike | None = None,
    top_k: int = 1,
    fast: bool | str = True,
    labelled: Manifest | None = None,
    device: str | None = None,
) -> dict:
    """Top-k of sum over models of their logits; writes `id,prediction[,top2,...]` (class names) when asked, and
    returns {'ids', 'top' [N, k] class indices, 'classes', 'metrics' (when `labelled`)}.

    `fast` True (or "auto") takes the bf16 screening scan where it pays (`choose_scan`), False the fp32 scan only;
    the result is the same. `device` defaults to this rank's GPU, else the CPU."""
    info = get_info()
    if info.enabled:
        outcome = None
        if info.is_main:
            try:
                outcome = _predict(dirs, out_csv, top_k, fast, labelled, device)
            except DataError as e:
                outcome = e
        outcome = broadcast_object(outcome)
        if isinstance(outcome, DataError):
            raise outcome
        return outcome
    return _predict(dirs, out_csv, top_k, fast, labelled, device)


def _predict(
    dirs: Sequence[str | os.PathLike],
    out_csv: str | os.PathLike | None,
    top_k: int,
    fast: bool | str,
    labelled: Manifest | None,
    device: str | None,
) -> dict:
    try:
        sets = [open_features(d) for d in dirs]
        check_compatible(sets)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(str(e)) from None
    if not 1 <= top_k <= len(sets[0].classes):
        raise DataError(f"top-k {top_k} is not in [1, {len(sets[0].classes)}] (the number of classes)")
    device = device or str(default_device())
    idx, _ = ensemble_topk(sets, k=top_k, fast="auto" if fast is True else fast, device=device)
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
