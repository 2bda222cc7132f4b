"""The Python API at the package top (`import lossguided`): load a manifest, record per-sample losses for any
PyTorch model and DataLoader, select the clean list, rank the suspects, run the whole recipe. Thin layers over the
library (`data`, `refine`, `recipe`); each validates its arguments and names what is wrong in one line."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lossguided.data.manifest import ClassMap, DataError, Manifest
from lossguided.data.storage import Storage

TOP_K = 5


def load_manifest(
    source: Any,
    *,
    split: str = "train",
    classes: ClassMap | Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> Manifest:
    """A manifest from a CSV path (`path,label[,id]`), an ImageFolder root, a `lossguided preprocess` folder,
    WebDataset shards, `'fashion-mnist'` (its `split`), or a pandas DataFrame with columns `path`, `label` and
    optionally `id` (relative paths resolve against `root`, default the working folder). `classes` encodes the labels
    through a fixed class map (e.g. a checkpoint's); `options` are data settings by name (a config's data section,
    e.g. how the built-in benchmark is made)."""
    class_map = ClassMap(tuple(classes)) if classes is not None and not isinstance(classes, ClassMap) else classes
    if _is_dataframe(source):
        return _from_dataframe(source, classes=class_map, root=Path(root) if root is not None else Path.cwd())
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"load_manifest: expected a path, 'fashion-mnist' or a DataFrame, got {type(source).__name__}")
    from lossguided.data.sources import load_manifest as _load

    return _load(os.fspath(source), split=split, classes=class_map, options=options)


def _is_dataframe(x: Any) -> bool:
    return hasattr(x, "columns") and hasattr(x, "to_dict") and hasattr(x, "__len__")


def _from_dataframe(df: Any, *, classes: ClassMap | None, root: Path) -> Manifest:
    columns = [str(c) for c in df.columns]
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DataError(f"DataFrame: missing column(s) {missing}; expected path,label[,id], got {columns}")
    if len(df) == 0:
        raise DataError("DataFrame: no samples")
    paths, labels = [], []
    for row, (p, lab) in enumerate(zip(df["path"].tolist(), df["label"].tolist(), strict=True)):
        if p is None or str(p).strip() == "" or p != p:  # p != p: NaN
            raise DataError(f"DataFrame: row {row}: empty path")
        if lab is None or str(lab).strip() == "" or lab != lab:
            raise DataError(f"DataFrame: row {row}: empty label")
        full = Path(p) if os.path.isabs(str(p)) else root / str(p)
        if not full.is_file():
            raise DataError(f"DataFrame: row {row}: image not found: {full}")
        paths.append(str(full))
        labels.append(str(lab))
    if "id" in columns:
        try:
            ids = np.array([int(i) for i in df["id"].tolist()], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise DataError(f"DataFrame: column id must hold integers ({e})") from None
    else:
        ids = np.arange(len(paths), dtype=np.int64)
    label_arr = np.array(labels, dtype=object)
    classes = classes or ClassMap.from_labels(label_arr)
    return Manifest(
        ids=ids,
        labels=classes.encode(label_arr, source="DataFrame"),
        classes=classes,
        source="DataFrame",
        storage=Storage.files(paths),
    )


# -- losses of any model ------------------------------------------------------------------------------------------
def record_losses(
    model: Any,
    loader: Iterable,
    *,
    manifest: Manifest | None = None,
    classes: ClassMap | Sequence[str] | None = None,
    paths: Mapping[int, str] | None = None,
    device: Any = None,
    normalization: tuple | None = None,
) -> Any:
    """Each sample's cross-entropy under `model` (eval mode, no weight update), as a `LossTable` that `select`,
    `rank_suspects` and `lossguided suspects/select` take.

    `loader` yields batches that carry ids: `(images, labels, ids)` tuples, or mappings with `image`/`input`,
    `label`/`target` and `id`/`index` keys; labels are class indices. A sample seen twice (a padded sampler) is
    averaged. uint8 images (the package's own datasets, `image_dataset`) are normalized with `normalization`
    ((mean, std) on 0-255), by default the statistics of the model's own pretrained config in timm (the paper's
    where it has none); float images go to the model as they are. The table also keeps each sample's probability
    of its given label and its five most likely classes.
    `manifest` (the samples' manifest) names the classes and the images; without it, `classes` names the classes
    (default `0..K-1`) and `paths` maps ids to image paths, for the report and suspects.
    """
    if manifest is not None:
        classes = manifest.classes if classes is None else classes
        if paths is None and manifest.paths is not None:
            paths = dict(zip(manifest.ids.tolist(), manifest.paths, strict=True))
    import torch

    from lossguided.data.transforms import BatchTransform
    from lossguided.losstable import LossTable

    device = torch.device(device) if device is not None else _model_device(model)
    mean, std = normalization if normalization is not None else _model_normalization(model)
    normalize = BatchTransform(mean=mean, std=std).to(device).eval()
    was_training = model.training
    model.eval()
    sums: dict[str, list] = {"ids": [], "losses": [], "labels": [], "top": [], "probs": [], "p_label": []}
    with torch.no_grad():
        for i, batch in enumerate(loader):
            x, y, ids = _unpack(batch, i)
            x = x.to(device)
            logits = model(normalize(x) if x.dtype == torch.uint8 else x).float()
            y = y.to(device).long()
            if logits.ndim != 2 or y.shape != (logits.shape[0],) or ids.shape != y.shape:
                raise ValueError(
                    f"batch {i}: logits {tuple(logits.shape)}, labels {tuple(y.shape)} and ids "
                    f"{tuple(ids.shape)} do not match ([B, K], [B], [B])"
                )
            probs = logits.softmax(1)
            top_p, top_c = probs.topk(min(TOP_K, logits.shape[1]), dim=1)
            sums["ids"].append(ids.cpu().long())
            sums["losses"].append(torch.nn.functional.cross_entropy(logits, y, reduction="none").cpu())
            sums["labels"].append(y.cpu())
            sums["top"].append(top_c.cpu())
            sums["probs"].append(top_p.cpu())
            sums["p_label"].append(probs.gather(1, y[:, None])[:, 0].cpu())
    model.train(was_training)
    if not sums["ids"]:
        raise ValueError("record_losses: the loader yielded no batches")
    cat = {k: torch.cat(v).numpy() for k, v in sums.items()}
    ids, first, inverse, counts = np.unique(cat["ids"], return_index=True, return_inverse=True, return_counts=True)
    mean = lambda a: np.bincount(inverse, weights=a.astype(np.float64), minlength=len(ids)) / counts  # noqa: E731
    k = int(cat["top"].max()) + 1
    names = _class_names(classes, k, int(cat["labels"].max()) + 1)
    cols = dict(
        ids=ids,
        labels=cat["labels"][first],
        losses=mean(cat["losses"]).astype(np.float32),
        n_records=counts.astype(np.int64),
        preds=cat["top"][first, 0],
        paths=[(paths or {}).get(int(i), f"#{int(i)}") for i in ids],
        classes=names,
    )
    extra = {
        "p_label": mean(cat["p_label"]).astype(np.float32),
        "top_classes": cat["top"][first],
        "top_probs": cat["probs"][first].astype(np.float16),
    }
    known = {f.name for f in dataclasses.fields(LossTable)}
    return LossTable(**cols, **{key: v for key, v in extra.items() if key in known})


def _model_normalization(model: Any) -> tuple:
    """(mean, std) on 0-255 that the model's timm pretrained config names, else the paper's."""
    from lossguided.data.transforms import PAPER_MEAN, PAPER_STD

    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and std is not None and len(mean) == 3 and len(std) == 3:
        return tuple(255.0 * m for m in mean), tuple(255.0 * v for v in std)
    return PAPER_MEAN, PAPER_STD


def _logging_on() -> None:
    """Stage lines and tables on stderr for a caller who set up no logging; quiet once the caller configures any."""
    import logging

    root, ours = logging.getLogger(), logging.getLogger("lossguided")
    if root.handlers or ours.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _unpack(batch: Any, i: int) -> tuple:
    import torch

    if isinstance(batch, Mapping):
        pick = lambda *keys: next((batch[k] for k in keys if k in batch), None)  # noqa: E731
        x, y, ids = pick("image", "images", "input"), pick("label", "labels", "target"), pick("id", "ids", "index")
    elif isinstance(batch, list | tuple) and len(batch) >= 3:
        x, y, ids = batch[0], batch[1], batch[2]
    else:
        raise ValueError(
            f"batch {i}: expected (images, labels, ids) or a mapping with image, label and id keys; "
            "a loader without ids cannot tie losses to samples"
        )
    if x is None or y is None or ids is None:
        raise ValueError(f"batch {i}: a mapping batch needs image, label and id keys, got {sorted(batch)}")
    return x, torch.as_tensor(y), torch.as_tensor(ids)


def _class_names(classes: ClassMap | Sequence[str] | None, k_seen: int, k_labels: int) -> ClassMap:
    if classes is None:
        return ClassMap(tuple(str(c) for c in range(max(k_seen, k_labels))))
    class_map = classes if isinstance(classes, ClassMap) else ClassMap(tuple(str(c) for c in classes))
    if max(k_seen, k_labels) > len(class_map):
        raise ValueError(
            f"record_losses: the model or labels use {max(k_seen, k_labels)} classes, `classes` names {len(class_map)}"
        )
    return class_map


# -- select and rank --------------------------------------------------------------------------------------------
def select(
    table: Any,
    *,
    bands: Sequence[str] | str = ("1-5",),
    drop_loss_above: float | None = 9.0,
    drop_quantile: float | None = None,
    per_class: int | None = None,
) -> np.ndarray:
    """Sorted ids of the clean, balanced list: drop losses above `drop_loss_above` (and the top `drop_quantile`),
    then each class's rank `bands` by loss ("1-5", "6-10", "median", ...), united. `table` is a `LossTable` or a
    path to one."""
    from lossguided.refine.apply import select_from_table

    table = _table(table)
    return select_from_table(
        table,
        bands=[bands] if isinstance(bands, str) else list(bands),
        drop_loss_above=drop_loss_above,
        drop_quantile=drop_quantile,
        per_class=per_class,
    )


class Suspects(NamedTuple):
    """The likeliest wrong labels, highest loss first; every field has one row per suspect."""

    ids: np.ndarray  # [S] sample ids
    labels: np.ndarray  # [S] given class index
    predicted: np.ndarray  # [S] the model's class index
    losses: np.ndarray  # [S]
    rank_in_class: np.ndarray  # [S] 1 = the highest loss of its class
    class_names: tuple[str, ...]


def rank_suspects(table: Any, *, per_class: int | None = None, top: int | None = None) -> Suspects:
    """Samples by loss, highest first (ties: smaller id), at most `per_class` per class and `top` in all."""
    from lossguided.report.suspects import rank_suspects as _rank

    table = _table(table)
    pos, ranks = _rank(table.ids, table.labels, table.losses, per_class=per_class, top=top)
    return Suspects(
        table.ids[pos], table.labels[pos], table.preds[pos], table.losses[pos], ranks[pos], tuple(table.classes.names)
    )


def _table(table: Any) -> Any:
    from lossguided.losstable import LossTable

    if isinstance(table, str | os.PathLike):
        return LossTable.load(table)
    if not isinstance(table, LossTable):
        raise TypeError(f"expected a LossTable or the path of one, got {type(table).__name__}")
    return table


# -- the whole recipe -------------------------------------------------------------------------------------------
def run_recipe(
    recipe: Any = "cpu-small",
    *,
    out_dir: str | os.PathLike,
    overrides: Mapping | Sequence[str] | None = None,
    keep_optimizer: bool = False,
) -> dict:
    """Run (or resume) pre-train, record, select and fine-tune into `out_dir`; returns the stages table
    (`{"stages": [...]}`, also in OUT/metrics.json). `recipe` is a shipped name, a YAML path or a `RecipeConfig`;
    `overrides` are nested (`{"pretrain": {"epochs": 1}}`) or dotted (`["pretrain.epochs=1"]`). It logs its
    stage lines, epochs and the final table on stderr unless the caller has configured logging."""
    from lossguided import config
    from lossguided.engine import checkpoint
    from lossguided.recipe import run_recipe as _run

    if isinstance(recipe, config.RecipeConfig):
        items = overrides if isinstance(overrides, Mapping) else dict(map(config.parse_override, overrides or []))
        cfg = config.merge(recipe, dict(items))
    else:
        cfg = config.load(recipe, overrides if isinstance(overrides, Mapping) else list(overrides or []))
    _logging_on()
    metrics = _run(cfg, out_dir=out_dir)
    if not keep_optimizer:
        checkpoint.slim_finished_stages(out_dir)
    import logging

    from lossguided.recipe import format_table

    logging.getLogger("lossguided").info("%s", format_table(metrics))
    return metrics
