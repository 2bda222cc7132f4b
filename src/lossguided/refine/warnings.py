"""Warnings that stop silent damage: a selection that throws most of the data away, classes gutted by it, a noise
estimate that a second estimate contradicts, a model too weak to judge labels. Pure numpy, one line each; the
recipe and `select` print them, and with `--strict` (`refine.strict`) they are errors."""

from __future__ import annotations

import numpy as np

from lossguided.losstable import LossTable

MIN_KEPT_SHARE = 0.25
MAX_CLASS_LOSS = 0.5
NOISE_RATIO = 2.0  # the two noise estimates differ by more than this factor
MIN_NOISE_GAP = 0.05  # ... and by more than 5 points
MAX_JUDGE_ERROR = 0.5  # a recording model with a val error above this cannot tell wrong labels from hard ones


def selection_warnings(
    table: LossTable,
    kept_ids: np.ndarray,
    info: dict | None = None,
    *,
    val_error: float | None = None,
    confident_other: np.ndarray | None = None,
) -> list[str]:
    """One line per problem with a selection of `kept_ids` from `table`. `info`: the selection's record (its
    estimated noise rate, for 'auto'/'hybrid'); `val_error`: the recording model's val mean top-1 error;
    `confident_other` [N] bool: the samples confidently another class (the second noise estimate)."""
    out = []
    n, k = len(table), len(table.classes)
    if n == 0:
        return out
    kept = len(kept_ids)
    if kept < MIN_KEPT_SHARE * n:
        out.append(
            f"the selection keeps {kept / n:.0%} of the data ({kept:,} of {n:,} samples): the bands, the per-class "
            "cap or the threshold throw most of it away (the paper's 5 a class suits 50,030 classes, not yours?)"
        )
    available = np.bincount(table.labels, minlength=k)
    chosen = np.bincount(table.labels[np.searchsorted(table.ids, kept_ids)], minlength=k)
    lost = (available > 0) & (chosen < (1 - MAX_CLASS_LOSS) * available)
    if lost.any():
        share = np.where(available > 0, chosen / np.maximum(available, 1), 1.0)
        worst = int(np.argmin(np.where(lost, share, np.inf)))
        out.append(
            f"{int(lost.sum()):,} of {int((available > 0).sum()):,} classes lose over half their images (worst: "
            f"{table.classes.names[worst]!r} keeps {chosen[worst]:,} of {available[worst]:,})"
        )
    estimated = (info or {}).get("estimated_noise_rate")
    if estimated is not None and confident_other is not None:
        second = float(np.mean(confident_other))
        hi, lo = max(estimated, second), min(estimated, second)
        if hi - lo > MIN_NOISE_GAP and hi > NOISE_RATIO * max(lo, 1e-9):
            out.append(
                f"the loss threshold estimates {estimated:.0%} wrong labels, confident learning {second:.0%}: one of "
                "them misreads these losses (look at the report's histogram before trusting the selection)"
            )
    if val_error is not None and val_error > MAX_JUDGE_ERROR:
        out.append(
            f"the model that recorded the losses has a val error of {val_error:.2f}: too weak to tell wrong labels "
            "from hard ones (train stage 1 longer, or start from pretrained weights)"
        )
    return out
