"""The per-sample loss table: one row per training sample, keyed by its id, in a columnar `.npz` file.

Columns: `id` int64, `label` int64 (class index of the given, possibly wrong, label), `loss` float32 (the average
over `n_records` recorded epochs), `n_records` int64, `pred` int64 (the model's class), `path` str, and
`true_label` when the truth is known (benchmarks). The class names are stored beside them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.io import write_npz


@dataclass
class LossTable:
    ids: np.ndarray
    labels: np.ndarray
    losses: np.ndarray
    n_records: np.ndarray
    preds: np.ndarray
    paths: np.ndarray
    classes: ClassMap
    true_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_recording(cls, manifest: Manifest, ids: np.ndarray, losses: np.ndarray, n_records: np.ndarray,
                       preds: np.ndarray) -> LossTable:  # fmt: skip
        """Join recorded per-id values with the manifest (ids sorted)."""
        pos = manifest.positions_of(ids)
        paths = manifest.paths[pos] if manifest.paths is not None else np.array(
            [f"{manifest.source}#{i}" for i in ids], dtype=object)  # fmt: skip
        true = manifest.true_labels[pos] if manifest.true_labels is not None else None
        return cls(ids, manifest.labels[pos], losses, n_records, preds, paths, manifest.classes, true)

    def save(self, path: str | os.PathLike) -> None:
        cols = {"id": self.ids, "label": self.labels, "loss": self.losses, "n_records": self.n_records,
                "pred": self.preds, "path": self.paths.astype(str),
                "classes": np.array(self.classes.names, dtype=str)}  # fmt: skip
        if self.true_labels is not None:
            cols["true_label"] = self.true_labels
        write_npz(path, **cols)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LossTable:
        """Read and validate: NaN or infinite losses are an error naming how many and the first id."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: loss table not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable loss table ({e})") from None
        need = ("id", "label", "loss", "n_records", "pred", "path", "classes")
        missing = [c for c in need if c not in cols]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        bad = ~np.isfinite(cols["loss"])
        if bad.any():
            raise DataError(f"{path}: {bad.sum()} non-finite losses (NaN or inf), first at id {cols['id'][bad][0]}")
        ids, n = cols["id"], len(cols["id"])
        if any(len(cols[c]) != n for c in ("label", "loss", "n_records", "pred", "path")):
            raise DataError(f"{path}: columns of different lengths")
        unordered = np.flatnonzero(np.diff(ids) <= 0)  # rows are looked up by id with a binary search
        if len(unordered):
            raise DataError(f"{path}: ids must be unique and ascending; id {ids[unordered[0] + 1]} follows "
                            f"{ids[unordered[0]]}")  # fmt: skip
        k = len(cols["classes"])
        if n and (cols["label"].min() < 0 or cols["label"].max() >= k):
            raise DataError(f"{path}: labels must be class indices in [0, {k}); "
                            f"id {ids[np.argmax((cols['label'] < 0) | (cols['label'] >= k))]} is not")  # fmt: skip
        return cls(cols["id"], cols["label"], cols["loss"].astype(np.float32), cols["n_records"], cols["pred"],
                   cols["path"].astype(object), ClassMap(tuple(str(c) for c in cols["classes"])),
                   cols.get("true_label"))  # fmt: skip

    @property
    def is_noisy(self) -> np.ndarray | None:
        """True where the given label is wrong (known only for benchmarks)."""
        return None if self.true_labels is None else self.labels != self.true_labels
