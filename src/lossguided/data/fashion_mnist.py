"""Built-in dataset: Zalando's Fashion-MNIST product images (Debian's `dataset-fashion-mnist` IDX files),
made long-tailed and noisy by our own seeded code, with the true labels kept for scoring.

Splits: `train` (long-tailed, noisy), `val` (a clean, balanced hold-out of the original training images, never in
`train`), `select` (a second clean, balanced hold-out, `select_per_class` a class, never in `train` or `val`: where a
benchmark reads its method choices, apart from the split that picks checkpoints), `test` (the original 10,000 test
images, clean). Ids: original train index; test ids start at 60,000.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.noise import add_label_noise, long_tail_subset
from lossguided.data.storage import Storage

NAME = "fashion-mnist"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
TEST_ID_OFFSET = 60_000
SPLITS = ("train", "val", "select", "test")


@dataclass(frozen=True)
class FashionMnistOptions:
    """How the built-in benchmark is made: every field changes the data, so all are saved with a run."""

    data_dir: str = DEFAULT_DIR
    imbalance_ratio: float = 100.0
    noise_rate: float = 0.2
    noise_kind: str = "symmetric"
    seed: int = 0
    val_per_class: int = 100
    select_per_class: int = 0  # a second clean hold-out for method choices (benchmarks); 0: none
    train_limit: int | None = None  # keep only this many training samples (tests, quick runs)
    noise_target: tuple[int, ...] | None = None  # confusion noise: class c -> noise_target[c]
    noisy_val: bool = False  # val carries the same noise as train (a user's val usually does)


# FashionMnistOptions field -> its name in the config's data section (`DataConfig`), where they differ
_DATA_NAMES = {"seed": "data_seed"}


def options_from(data: Mapping[str, Any] | object | None) -> FashionMnistOptions:
    """The options in a config's data section: a `DataConfig`, a dict of its fields (as saved in a run's
    config.yaml, or a command's flags) or None (the defaults); fields it lacks or sets to None keep their defaults.
    The one place its fields map to the built-in data's, so a caller passes the data section to any source."""
    if isinstance(data, FashionMnistOptions):
        return data
    default = FashionMnistOptions()
    values = {}
    for f in dataclasses.fields(FashionMnistOptions):
        key = _DATA_NAMES.get(f.name, f.name)
        value = data.get(key) if isinstance(data, Mapping) else getattr(data, key, None)
        values[f.name] = getattr(default, f.name) if value is None else value
    if values["noise_target"] is not None:
        values["noise_target"] = tuple(values["noise_target"])
    return FashionMnistOptions(**values)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=2)
def _load_raw(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    d = Path(data_dir)
    img, lab = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img, lab):
        if not p.is_file():
            raise DataError(f"{p}: not found; install Debian's dataset-fashion-mnist (`make data`) or pass --data-dir")
    return _read_idx(img), _read_idx(lab).astype(np.int64)


def load(split: str, options: FashionMnistOptions = FashionMnistOptions()) -> Manifest:
    """One split as an in-memory manifest (images uint8 [N,28,28])."""
    if split not in SPLITS:
        raise ValueError(f"fashion-mnist split {split!r} is not one of {SPLITS}")
    data_dir = os.environ.get("LOSSGUIDED_FASHION_MNIST_DIR", options.data_dir)
    classes = ClassMap(CLASS_NAMES)
    if split == "test":
        images, labels = _load_raw(data_dir, "test")
        ids = np.arange(len(labels)) + TEST_ID_OFFSET
        return Manifest(
            ids=ids,
            labels=labels,
            classes=classes,
            source=NAME + ":test",
            storage=Storage.arrays(images),
            true_labels=labels,
        )
    images, labels = _load_raw(data_dir, "train")
    rng = np.random.default_rng(options.seed)
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(classes))]
    n_val, n_sel = options.val_per_class, options.select_per_class
    val_idx = np.sort(np.concatenate([p[:n_val] for p in perms]))
    select_idx = np.sort(np.concatenate([p[n_val : n_val + n_sel] for p in perms]))
    if split in ("val", "select"):  # clean, balanced hold-outs (val noisy too with noisy_val)
        idx = val_idx if split == "val" else select_idx
        true = labels[idx]
        noisy_val = split == "val" and options.noisy_val
        return Manifest(
            ids=idx,
            labels=_noisy(true, options, seed=options.seed + 4) if noisy_val else true,
            classes=classes,
            source=f"{NAME}:{split}",
            storage=Storage.arrays(images[idx]),
            true_labels=true,
        )
    pool = np.setdiff1d(np.arange(len(labels)), np.concatenate([val_idx, select_idx]))
    keep = pool[long_tail_subset(labels[pool], imbalance_ratio=options.imbalance_ratio, seed=options.seed + 1)]
    if options.train_limit is not None and options.train_limit < len(keep):
        keep = np.sort(np.random.default_rng(options.seed + 3).choice(keep, options.train_limit, replace=False))
    true = labels[keep]
    noisy = _noisy(true, options, seed=options.seed + 2)
    return Manifest(
        ids=keep,
        labels=noisy,
        classes=classes,
        source=NAME + ":train",
        storage=Storage.arrays(images[keep]),
        true_labels=true,
    )


def _noisy(true: np.ndarray, options: FashionMnistOptions, *, seed: int) -> np.ndarray:
    return add_label_noise(
        true,
        rate=options.noise_rate,
        kind=options.noise_kind,
        num_classes=len(CLASS_NAMES),
        seed=seed,
        target=options.noise_target,
    )


PATH_PREFIX = NAME + ":"


def resolve_paths(manifest: Manifest, options: FashionMnistOptions = FashionMnistOptions()) -> Manifest:
    """A CSV manifest whose paths read `fashion-mnist:<split>#<id>` (what `lossguided select` writes for the built-in
    data) as an in-memory manifest: pixels and true labels by id, labels as the CSV has them."""
    paths = manifest.paths
    rows = manifest.rows if manifest.rows is not None else np.arange(len(manifest)) + 2
    ids = np.empty(len(manifest), dtype=np.int64)
    for i, p in enumerate(paths):
        head, _, num = str(p).partition("#")
        split = head.removeprefix(PATH_PREFIX) if head.startswith(PATH_PREFIX) else None
        if split not in SPLITS or not num.isdigit():
            what = "mixes built-in and file paths" if split is None else "expected fashion-mnist:<split>#<id>"
            raise DataError(f"{manifest.source}: row {rows[i]}: path {p!r}: {what}")
        ids[i] = int(num)
    bad = np.flatnonzero(ids != manifest.ids)
    if len(bad):
        r = bad[0]
        raise DataError(
            f"{manifest.source}: row {rows[r]}: id {manifest.ids[r]} differs from the path's "
            f"#{ids[r]}; add an id column equal to it"
        )
    data_dir = os.environ.get("LOSSGUIDED_FASHION_MNIST_DIR", options.data_dir)
    n_train, n_test = len(_load_raw(data_dir, "train")[1]), len(_load_raw(data_dir, "test")[1])
    is_test = ids >= TEST_ID_OFFSET
    valid = np.where(is_test, ids - TEST_ID_OFFSET < n_test, (ids >= 0) & (ids < n_train))
    if not valid.all():
        r = int(np.flatnonzero(~valid)[0])
        raise DataError(f"{manifest.source}: row {rows[r]}: fashion-mnist has no image with id {ids[r]}")
    images = np.empty((len(ids), 28, 28), dtype=np.uint8)
    true = np.empty(len(ids), dtype=np.int64)
    for part, mask, offset in (("train", ~is_test, 0), ("test", is_test, TEST_ID_OFFSET)):
        if mask.any():
            raw_images, raw_labels = _load_raw(data_dir, part)
            images[mask], true[mask] = raw_images[ids[mask] - offset], raw_labels[ids[mask] - offset]
    known = set(CLASS_NAMES) <= set(manifest.classes.names)  # the true labels are only meaningful by name
    true = manifest.classes.encode(np.array(CLASS_NAMES, dtype=object)[true], source=manifest.source) if known else None
    return Manifest(
        ids=manifest.ids,
        labels=manifest.labels,
        classes=manifest.classes,
        source=manifest.source,
        storage=Storage.arrays(images),
        true_labels=true,
        rows=manifest.rows,
    )
