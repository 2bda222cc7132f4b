"""Where a manifest's pixels live: one small record per manifest, so that the image sources pick a manifest's reader
by its `kind` instead of guessing from which fields happen to be set.

Kinds: `files` (one image file per row, `names` are their paths), `arrays` (in-memory uint8 `images`, e.g. the
built-in benchmark), `preprocessed` (a `lossguided preprocess` folder `root`; `names` keep the original paths) and
`webdataset` (tar shards; `names` read `<shard>.tar#<key>`; `root` is the shard spec the rows came from, or None when
the rows are found by name, e.g. a selection CSV of shard samples).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

KINDS = ("files", "arrays", "preprocessed", "webdataset")
_NEEDS = {"files": ("names",), "arrays": ("images",), "preprocessed": ("names", "root"), "webdataset": ("names",)}


@dataclass(frozen=True, eq=False)
class Storage:
    """One manifest's pixel storage. Per-row fields (`names` [N] strings, `images` uint8 [N,H,W] or [N,H,W,3]) follow
    the manifest's rows; `root` is shared by every subset. `names` given as a list or array stays as given until the
    manifest converts it (so that a bad name is reported with the manifest's source)."""

    kind: str
    names: Any = None
    images: np.ndarray | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"storage kind {self.kind!r} is not one of {KINDS}")
        missing = [f for f in _NEEDS[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{self.kind} storage needs {' and '.join(missing)}")

    @classmethod
    def files(cls, paths: Any) -> Storage:
        """Image files, one path per row."""
        return cls("files", names=paths)

    @classmethod
    def arrays(cls, images: np.ndarray) -> Storage:
        """In-memory uint8 images [N,H,W] or [N,H,W,3]."""
        return cls("arrays", images=images)

    @classmethod
    def preprocessed(cls, root: str, names: Any) -> Storage:
        """A `lossguided preprocess` folder; `names` are the original paths (for people and loss tables)."""
        return cls("preprocessed", names=names, root=str(root))

    @classmethod
    def webdataset(cls, names: Any, spec: str | None = None) -> Storage:
        """WebDataset shards, `names` reading `<shard>.tar#<key>`; `spec` (every row came from it) finds rows by id."""
        return cls("webdataset", names=names, root=None if spec is None else str(spec))

    def __len__(self) -> int:
        return len(self.images if self.kind == "arrays" else self.names)

    def take(self, index: np.ndarray) -> Storage:
        """Rows `index` (positions or a boolean mask) of the per-row fields; `root` is kept."""
        return replace(
            self,
            names=None if self.names is None else self.names[index],
            images=None if self.images is None else self.images[index],
        )
