"""The paper's stages as library functions over a resolved config: load the data, train (pre-train or fine-tune),
record per-sample losses, evaluate. The CLI and the recipe are thin layers over these."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lossguided.config import ConfigError, DataConfig, RecipeConfig, TrainConfig, from_dict, to_dict
from lossguided.data.augment import with_randaugment
from lossguided.data.datasets import BadImage, check_all, write_bad_images
from lossguided.data.manifest import ClassMap, Manifest, check_confined
from lossguided.data.sources import default_split_spec, load_manifest, make_dataset
from lossguided.data.transforms import normalization, saved_normalization
from lossguided.distributed import get_info
from lossguided.engine import checkpoint
from lossguided.engine.evaluate import evaluate
from lossguided.engine.head import prepare_head
from lossguided.engine.recorder import LossRecorder
from lossguided.engine.trainer import FitResult, Trainer, seed_everything
from lossguided.io import atomic_path, write_json
from lossguided.losstable import LossTable
from lossguided.models import create_model, load_model
from lossguided.pretrained import WeightsError

log = logging.getLogger("lossguided")


@dataclass
class Splits:
    train: Manifest
    val: Manifest | None
    test: Manifest | None
    bad_images: list[BadImage] = field(default_factory=list)  # left out with data.skip_bad_images

    @property
    def classes(self) -> ClassMap:
        return self.train.classes


def load_splits(data: DataConfig, *, classes: ClassMap | None = None, need_train: bool = True) -> Splits:
    """Read train/val/test; val and test are encoded with the training class map, and every image file is decoded
    once now, so bad input stops the run before any training (or, with data.skip_bad_images, is left out)."""
    train = load_manifest(data.train, split="train", classes=classes, options=data) if need_train else None
    classes = classes or train.classes
    val_spec = data.val or default_split_spec(data.train, "val")
    test_spec = data.test or default_split_spec(data.train, "test")
    val = load_manifest(val_spec, split="val", classes=classes, options=data) if val_spec else None
    test = load_manifest(test_spec, split="test", classes=classes, options=data) if test_spec else None
    if data.confine_paths:
        for m in (train, val, test):
            if m is not None:
                check_confined(m)
    (train, val, test), bad = check_all((train, val, test), skip_bad=data.skip_bad_images, workers=data.workers)
    if train is None:
        train = val or test
    return Splits(train, val, test, bad)


def choice_split(data: DataConfig, splits: Splits) -> Manifest | None:
    """The labelled split where a run reads its 'auto' choices: data.choose when set (checked like the others),
    else val. A benchmark points it at a split held out of both train and val."""
    if data.choose is None:
        return splits.val
    manifest = load_manifest(data.choose, split="select", classes=splits.classes, options=data)
    (manifest,), _ = check_all((manifest,), skip_bad=data.skip_bad_images, workers=data.workers)
    return manifest


def loader_kwargs(data: DataConfig) -> dict:
    return {
        "workers": data.workers,
        "pin_memory": data.pin_memory,
        "persistent_workers": data.persistent_workers,
        "prefetch_factor": data.prefetch_factor,
    }


def build_model(cfg: RecipeConfig, classes: ClassMap, *, init_from: str | Path | None = None) -> nn.Module:
    """A fresh timm model, or one initialized from a lossguided checkpoint of the same class map."""
    pretrained = cfg.model.pretrained and init_from is None
    try:
        model = create_model(
            cfg.model.name,
            num_classes=len(classes),
            pretrained=pretrained,
            pretrained_path=cfg.model.pretrained_path if init_from is None else None,
        )
    except Exception as e:  # noqa: BLE001 - a weights file can fail in many libraries' ways; name it in one line
        path = cfg.model.pretrained_path if init_from is None else None
        if isinstance(e, WeightsError):  # one line naming the file and the first mismatch
            detail = str(e).removeprefix(f"{path}: ")
            raise ConfigError(f"{path}: not usable as {cfg.model.name!r} weights ({detail})") from None
        if path is not None:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            what = f"{type(e).__name__}: {first}"
            raise ConfigError(f"{path}: not usable as {cfg.model.name!r} weights ({what})") from None
        if not isinstance(e, OSError | RuntimeError):
            raise
        if pretrained and cfg.model.pretrained_path is None:
            raise ConfigError(
                f"could not load ImageNet weights for {cfg.model.name!r} through timm ({type(e).__name__}); "
                "offline, pass --pretrained-path FILE or --no-pretrained"
            ) from None
        raise
    if init_from is not None:
        state = checkpoint.load(init_from)
        checkpoint.check_same_classes(state, classes, path=str(init_from), source="the training data")
        saved = state.get("model_name") or (state.get("config") or {}).get("model", {}).get("name")
        if saved and saved != cfg.model.name:
            raise ConfigError(f"{init_from}: holds a {saved!r} model, the config says model.name={cfg.model.name!r}")
        model.load_state_dict(state["model"])
    return model


OPTIONAL_SETTINGS = (
    "randaugment",
    "head",
    "channels_last",
    "ema_decay",
)  # options added later (or made optional): None: off


def run_key(
    cfg: RecipeConfig, tcfg: TrainConfig, train_set: Manifest, *, init_from: str | Path | None, update: bool = True
) -> dict:
    """What makes a training run this run: the model, the training settings (epochs and patience may grow), the
    training samples and labels, the starting checkpoint's bytes. A folder is only resumed under the same key."""
    data = hashlib.sha256(np.ascontiguousarray(train_set.ids, dtype=np.int64).tobytes())
    data.update(np.ascontiguousarray(train_set.labels, dtype=np.int64).tobytes())
    start = None
    if init_from is not None:
        with open(init_from, "rb") as f:
            start = hashlib.file_digest(f, "sha256").hexdigest()
    free = (  # may change between a run and its resumption
        "epochs",
        "patience",
        "save_every_steps",
        "compile",
        "ddp_bf16_compress",
        "ddp_bucket_view",
    )
    settings = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in free}
    for k in OPTIONAL_SETTINGS:  # off: left out, so run folders from before the option existed still resume
        if settings.get(k) is None:
            settings.pop(k, None)
    for k in ("mixup", "cutmix"):  # likewise, where 0 is off
        if not settings.get(k):
            settings.pop(k, None)
    if settings.get("sched") == "cosine":  # the schedule before there was a choice
        settings.pop("sched")
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if not (k in ("mean", "std") and v is None)}
    return {
        "model": model,
        "training settings": settings,
        "image size": cfg.data.image_size,
        "training data": data.hexdigest(),
        "starting checkpoint": start,
        "updates": update,
    }


def train(
    cfg: RecipeConfig,
    splits: Splits,
    *,
    out_dir: str | Path,
    section: str = "pretrain",
    init_from: str | Path | None = None,
    resume: bool = True,
) -> FitResult:
    """Pre-train (section 'pretrain') or fine-tune ('finetune', usually with init_from) into out_dir."""
    tcfg: TrainConfig = getattr(cfg, section)
    seed_everything(tcfg.seed)
    model = build_model(cfg, splits.classes, init_from=init_from)
    size = cfg.data.image_size
    plain = make_dataset(splits.train, image_size=size)
    if init_from is not None and tcfg.head not in (None, "keep"):  # before the trainer: its resume overrides it
        prepare_head(
            model,
            tcfg.head,
            dataset=plain,
            num_classes=len(splits.classes),
            normalization=normalization(to_dict(cfg)["model"]),
        )
    train_set = with_randaugment(plain, tcfg.randaugment, image_size=size)
    trainer = Trainer(
        model,
        train_set,
        cfg=tcfg,
        classes=splits.classes,
        out_dir=out_dir,
        run_config=to_dict(cfg),
        run_key=run_key(cfg, tcfg, splits.train, init_from=init_from),
        val_set=make_dataset(splits.val, image_size=size) if splits.val else None,
        loader_kwargs=loader_kwargs(cfg.data),
    )
    if splits.bad_images and trainer.info.is_main:
        write_bad_images(Path(out_dir) / "bad_images.csv", splits.bad_images)
    return trainer.fit(resume=resume)


PRED_PROBS_MAX_CLASSES = 1000  # an [N, K] float16 matrix beyond this is too big to be a by-product


def record_losses(
    cfg: RecipeConfig,
    train_set: Manifest,
    *,
    checkpoint_path: str | Path,
    out_path: str | Path,
    work_dir: str | Path | None = None,
    resume: bool = True,
    pred_probs_path: str | Path | None = None,
) -> LossTable:
    """The paper's recording: fine-tune once more on all the training data (cfg.record.epochs at cfg.record.lr,
    default the pre-training lr) and average each sample's loss over those epochs. lr 0 records without updates.
    With `pred_probs_path` (K <= 1,000) the last epoch's softmax of every sample is also written there: an [N, K]
    float16 .npy (open it with np.load(path, mmap_mode="r")), rows in the loss table's id order, for cleanlab."""
    kw = {"checkpoint_path": checkpoint_path, "out_path": out_path, "work_dir": work_dir, "resume": resume}
    if pred_probs_path is not None:
        return _record_with_pred_probs(cfg, train_set, Path(pred_probs_path), **kw)
    return _record(cfg, train_set, LossRecorder(train_set.ids), **kw)


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index [N] of each sample, stratified: within each class, a seeded shuffle dealt round-robin, so every
    fold holds about 1/folds of each class (a class with fewer samples than folds is in some folds only)."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(len(labels)), labels))  # by class, shuffled within it
    sorted_labels = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_labels, sorted_labels)
    out = np.empty(len(labels), dtype=np.int64)
    out[order] = (rank + rng.integers(folds)) % folds
    return out


def record_losses_cross_fitted(
    cfg: RecipeConfig, splits: Splits, *, out_path: str | Path, work_dir: str | Path
) -> LossTable:
    """Out-of-fold losses (`record.folds` = F > 1): F models pre-trained as stage 1 is, each on all folds but one,
    and each sample's loss is that of the model that never saw it (one pass in eval mode, no updates).

    Why: a model that trained on a wrong label has partly learned it. Under class-dependent noise (a shirt filed as a
    T-shirt) the in-sample loss of the paper's recording ranks the wrong labels far worse than under symmetric noise
    (AUROC 0.87 vs 0.99 in the benchmark), while held-out losses do not reward memorisation. The price is F - 1
    extra pre-trainings' worth of images; F = 2 costs one. Fold models and their scores live in `work_dir/fold<f>/`
    (each resumable); the merged table is written to `out_path`."""
    data, folds, work_dir = splits.train, cfg.record.folds, Path(work_dir)
    fold = fold_of(data.labels, folds, cfg.pretrain.seed)
    score_cfg = dataclasses.replace(cfg, record=dataclasses.replace(cfg.record, epochs=1, lr=0.0))
    parts = []
    for f in range(folds):
        fold_dir = work_dir / f"fold{f}"
        fit, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(held) == 0:
            continue
        log.info("record (fold %d/%d): pre-train on %d samples, score the other %d", f + 1, folds, len(fit), len(held))
        train(cfg, Splits(data.subset(fit), splits.val, None), out_dir=fold_dir / "model", section="pretrain")
        parts.append(
            record_losses(
                score_cfg,
                data.subset(held),
                checkpoint_path=fold_dir / "model" / "best.pt",
                out_path=fold_dir / "held_out_losses.npz",
                work_dir=fold_dir / "score",
            )
        )
    ids = np.concatenate([t.ids for t in parts])
    order = np.argsort(ids)
    col = lambda name: np.concatenate([getattr(t, name) for t in parts])[order]  # noqa: E731
    table = LossTable.from_recording(
        data,
        ids[order],
        col("losses"),
        col("n_records"),
        col("preds"),
        col("p_label"),
        col("top_classes"),
        col("top_probs"),
    )
    if get_info().is_main:
        table.save(out_path)
        sizes = [int((fold != f).sum()) for f in range(folds)]
        write_json(work_dir / "cross_fit.json", {"folds": folds, "seed": cfg.pretrain.seed, "fit_sizes": sizes})
    return table


def _record_with_pred_probs(cfg: RecipeConfig, train_set: Manifest, pred_probs_path: Path, **kw) -> LossTable:
    from numpy.lib.format import open_memmap

    n, k = len(train_set), len(train_set.classes)
    if k > PRED_PROBS_MAX_CLASSES:
        raise ConfigError(
            f"--pred-probs: {k:,} classes is more than {PRED_PROBS_MAX_CLASSES:,} (an [N, K] matrix of "
            f"{n * k * 2 / 1e9:.1f} GB); the loss table keeps each sample's top-5 and p_label instead"
        )
    if pred_probs_path.suffix != ".npy":
        raise ConfigError(
            f"--pred-probs {pred_probs_path}: the matrix is a .npy file; name it {pred_probs_path.stem}.npy"
        )
    if not get_info().is_main:  # only the main rank writes; the others still take part in every gather
        return _record(cfg, train_set, LossRecorder(train_set.ids, pred_probs=k), **kw)
    with atomic_path(pred_probs_path) as tmp:
        probs = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, k))
        probs[:] = np.nan  # a row left NaN was never recorded
        table = _record(cfg, train_set, LossRecorder(train_set.ids, pred_probs=k, pred_probs_out=probs), **kw)
        missing = int(np.isnan(probs[:, 0]).sum()) if n else 0
        probs.flush()
        del probs
        if missing:
            raise ConfigError(
                f"--pred-probs: {missing:,} samples have no probabilities (the recording resumed from "
                "a run made without --pred-probs); rerun with --no-resume"
            )
    return table


def _record(
    cfg: RecipeConfig,
    train_set: Manifest,
    recorder: LossRecorder,
    *,
    checkpoint_path: str | Path,
    out_path: str | Path,
    work_dir: str | Path | None,
    resume: bool,
) -> LossTable:
    rec = cfg.record
    lr = cfg.pretrain.lr if rec.lr is None else rec.lr
    tcfg = dataclasses.replace(
        cfg.pretrain,
        epochs=rec.epochs,
        lr=max(lr, 1e-12),
        patience=None,
        flip=False,
        randaugment=None,
        smoothing=0.0,
        batch_size=rec.batch_size or cfg.pretrain.batch_size,
    )
    seed_everything(tcfg.seed)
    model = build_model(cfg, train_set.classes, init_from=checkpoint_path)
    out_path = Path(out_path)
    work_dir = Path(work_dir) if work_dir else out_path.parent / (out_path.stem + "_record")
    trainer = Trainer(
        model,
        make_dataset(train_set, image_size=cfg.data.image_size),
        cfg=tcfg,
        classes=train_set.classes,
        out_dir=work_dir,
        run_config=to_dict(cfg),
        recorder=recorder,
        run_key=run_key(cfg, tcfg, train_set, init_from=checkpoint_path, update=lr > 0),
        update=lr > 0,
        loader_kwargs=loader_kwargs(cfg.data),
    )
    trainer.fit(resume=resume)
    table = LossTable.from_recording(train_set, *recorder.table(), *recorder.probabilities())
    if trainer.info.is_main:
        table.save(out_path)
    return table


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    manifest: Manifest,
    *,
    image_size: int | None = None,
    batch_size: int = 256,
    loader_kw: dict | None = None,
) -> dict:
    """Metrics JSON of a checkpoint on a labelled manifest (which must use the checkpoint's class map)."""
    state = checkpoint.load(checkpoint_path)
    classes = checkpoint.classes_of(state)
    manifest = manifest.with_classes(classes)
    cfg_dict = state.get("config") or {}
    cfg = from_dict(cfg_dict) if cfg_dict else RecipeConfig()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model, _ = load_model(state, device=device)  # the one place a checkpoint becomes a model
    ds = make_dataset(manifest, image_size=image_size or cfg.data.image_size)
    return evaluate(
        model,
        ds,
        class_names=classes.names,
        batch_size=batch_size,
        loader_kwargs=loader_kw,
        normalization=saved_normalization(state),
    )
