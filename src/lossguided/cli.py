"""Command line: each subcommand maps its flags onto the config schema (dotted overrides) and calls a library
function. This is the only module that parses arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lossguided import config as config_mod
from lossguided import layout

log = logging.getLogger("lossguided")

# flag dest -> dotted config key; a flag left unset leaves the recipe's value alone
DATA_FLAGS = {
    "train": "data.train",
    "val": "data.val",
    "test": "data.test",
    "image_size": "data.image_size",
    "data_dir": "data.data_dir",
    "imbalance_ratio": "data.imbalance_ratio",
    "noise_rate": "data.noise_rate",
    "noise_kind": "data.noise_kind",
    "data_seed": "data.data_seed",
    "train_limit": "data.train_limit",
    "workers": "data.workers",
    "skip_bad_images": "data.skip_bad_images",
    "confine_paths": "data.confine_paths",
}
STRICT_HELP = (
    "stop instead of warning when the selection keeps under 25%% of the data, a class loses over half its images, "
    "two noise estimates disagree, or the recording model's val error is above 0.5"
)
BUILTIN_DATA_FLAGS = ("data_dir", "imbalance_ratio", "noise_rate", "noise_kind", "data_seed", "train_limit")
MODEL_FLAGS = {"model": "model.name", "pretrained": "model.pretrained", "pretrained_path": "model.pretrained_path"}
TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "smoothing": "smoothing",
    "flip": "flip",
    "patience": "patience",
    "seed": "seed",
    "weight_decay": "weight_decay",
    "save_every_steps": "save_every_steps",
    "randaugment": "randaugment",
    "channels_last": "channels_last",
    "compile": "compile",
    "head": "head",
    "ema_decay": "ema_decay",
    "mixup": "mixup",
    "sched": "sched",
    "cutmix": "cutmix",
}


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help: the value when the flag has its own, else the help says where it comes
    from (the recipe or preset, whose values it names)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and "default" not in text and default not in (None, False, argparse.SUPPRESS):
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            text += f" (default: {shown.replace('%', '%%')})" if shown else ""
        return text


def _recipe_default(key: str, where: str, defaults: config_mod.RecipeConfig) -> str:
    """Help text for a flag that sets config key `key`: `(default: <where>'s, <value>)`."""
    node = defaults
    for part in key.split("."):
        node = getattr(node, part)
    shown = "none" if node is None else " ".join(map(str, node)) if isinstance(node, list) else str(node)
    return f"(default: {where + ' ' if where else ''}{shown})".replace("%", "%%")


def _add_data(
    p: argparse.ArgumentParser,
    *,
    train_required: bool = False,
    where: str = "the --preset's, else",
    defaults: config_mod.RecipeConfig | None = None,
) -> None:
    d = lambda key: _recipe_default(key, where, defaults or config_mod.RecipeConfig())  # noqa: E731
    g = p.add_argument_group("data")
    g.add_argument(
        "--train",
        required=train_required,
        help="training manifest: CSV (path,label[,id]), ImageFolder root, a `lossguided preprocess` "
        "folder, WebDataset .tar shards (a folder, one .tar or a brace pattern 'shards/train-{000000..000009}.tar'), "
        f"or 'fashion-mnist' (long-tailed, noisy, built in) {'(required)' if train_required else d('data.train')}",
    )
    g.add_argument("--val", help="validation manifest (default with fashion-mnist: its clean val split)")
    g.add_argument("--test", help="test manifest (default with fashion-mnist: its test split)")
    g.add_argument(
        "--image-size", "--img-size", type=int, help=f"square input size (paper: 256) {d('data.image_size')}"
    )
    g.add_argument(
        "--workers",
        "-j",
        type=int,
        help=f"DataLoader workers for image files (default: the "
        f"machine's cores, at most 4: {config_mod.default_workers()} here)",
    )
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help=f"skip unreadable images {d('data.skip_bad_images')}",
    )
    g.add_argument(
        "--confine-paths",
        action="store_true",
        default=None,
        help="refuse a manifest whose image paths leave its own folder ('../', absolute paths, links out) "
        f"{d('data.confine_paths')}",
    )
    _add_builtin_data(p, d)


def _add_builtin_data(p: argparse.ArgumentParser, d: Callable[[str], str] | None = None) -> None:
    """How the built-in benchmark is made: the one declaration of these flags, for every command that reads images.
    `d(key)` says where a flag's default comes from (default: the built-in values)."""
    d = d or (lambda key: _recipe_default(key, "", config_mod.RecipeConfig()))
    f = p.add_argument_group("fashion-mnist (built-in benchmark data, when a manifest is 'fashion-mnist[:split]')")
    f.add_argument("--data-dir", help=f"folder of the IDX files {d('data.data_dir')}")
    f.add_argument("--imbalance-ratio", type=float, help=f"largest / smallest class size {d('data.imbalance_ratio')}")
    f.add_argument("--noise-rate", type=float, help=f"share of wrong labels {d('data.noise_rate')}")
    f.add_argument(
        "--noise-kind", choices=["symmetric", "pairflip"], help=f"how labels are flipped {d('data.noise_kind')}"
    )
    f.add_argument("--data-seed", type=int, help=f"seed of the long tail and the noise {d('data.data_seed')}")
    f.add_argument("--train-limit", type=int, help="keep only this many training samples (quick runs) (default: all)")


def _data_options(args: argparse.Namespace, base: config_mod.DataConfig | None = None) -> dict:
    """Data settings for `load_manifest`: `base` (a checkpoint's data section) with the built-in data flags given."""
    options = config_mod.to_dict(base) if base is not None else {}
    return options | {k: getattr(args, k) for k in BUILTIN_DATA_FLAGS if getattr(args, k, None) is not None}


def _checkpoint_default(key: str) -> str:
    return _recipe_default(key, "the checkpoint's, else", config_mod.RecipeConfig())


def _add_model(
    p: argparse.ArgumentParser, *, where: str = "the --preset's, else", defaults: config_mod.RecipeConfig | None = None
) -> None:
    d = lambda key: _recipe_default(key, where, defaults or config_mod.RecipeConfig())  # noqa: E731
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"timm model name, e.g. resnest101e, resnet101, resnet10t {d('model.name')}")
    g.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ImageNet weights through timm (the hub, or its local cache when the hub cannot be "
        f"reached) {d('model.pretrained')}",
    )
    g.add_argument("--pretrained-path", help="local ImageNet weights file (.safetensors/.pth) (default: none)")


def _add_train(p: argparse.ArgumentParser) -> None:
    pre, ft = config_mod.TrainConfig(), config_mod.RecipeConfig().finetune

    def d(name: str) -> str:
        a, b = getattr(pre, name), getattr(ft, name)
        both = f"{a}" if a == b else f"{a}; with --init-from the finetune section's, {b}"
        return f"(default: the --preset's, else {both})".replace("%", "%%")

    g = p.add_argument_group("training (the pretrain section, or finetune with --init-from)")
    g.add_argument("--epochs", type=int, help=f"epochs to train {d('epochs')}")
    g.add_argument("--batch-size", "-b", type=int, help=f"images per batch (paper: 24) {d('batch_size')}")
    g.add_argument(
        "--lr", type=float, help=f"initial lr (paper: 1e-4), decayed per batch to lr/10 by eq. (2) {d('lr')}"
    )
    g.add_argument("--optimizer", "--opt", help=f"timm optimizer name (lookahead_radam = Ranger) {d('optimizer')}")
    g.add_argument("--weight-decay", type=float, help=f"decoupled weight decay {d('weight_decay')}")
    g.add_argument(
        "--smoothing", type=float, help=f"label smoothing eps of eq. (1) (paper: 0.2 in fine-tuning) {d('smoothing')}"
    )
    g.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=None, help=f"horizontal flip p=0.5 {d('flip')}"
    )
    g.add_argument(
        "--randaugment",
        "--aa",
        metavar="CONFIG",
        help=f"timm RandAugment of each training image, e.g. rand-m9-mstd0.5 (none: off) {d('randaugment')}",
    )
    g.add_argument(
        "--patience", type=int, help=f"early stop after N epochs without val improvement (none: never) {d('patience')}"
    )
    g.add_argument("--seed", type=int, help=f"seed of the weights' init and the batch order {d('seed')}")
    g.add_argument(
        "--save-every-steps",
        type=int,
        metavar="N",
        help=f"also checkpoint after every N batches of an epoch (a kill then loses minutes) {d('save_every_steps')}",
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format on CUDA (default: by architecture: off for ResNeSt, where it measured slower)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training forward (default: off)",
    )
    g.add_argument(
        "--ema-decay",
        "--model-ema-decay",
        type=float,
        help="keep timm's exponential moving average of the weights (e.g. 0.999); it is validated and saved as "
        "best.pt (default: off)",
    )
    g.add_argument(
        "--sched",
        choices=("cosine", "step", "multistep", "tanh", "poly"),
        help="lr schedule stepped per batch, from timm (default: cosine, the paper's eq. 2)",
    )
    g.add_argument("--mixup", type=float, help="timm Mixup alpha, e.g. 0.2 (default: off; never while recording)")
    g.add_argument("--cutmix", type=float, help="timm CutMix alpha, e.g. 1.0 (default: off)")
    g.add_argument(
        "--head",
        choices=("keep", "reset", "imprint"),
        help="with --init-from: keep the checkpoint's classifier, draw a new one, or imprint it with the training "
        "samples' class-mean features (default: keep)",
    )


def _add_config(p: argparse.ArgumentParser, *, positional_recipe: bool = False) -> None:
    if positional_recipe:
        p.add_argument(
            "recipe",
            nargs="?",
            default="cpu-small",
            help=f"recipe YAML or shipped name {config_mod.list_recipes()} (default cpu-small)",
        )
    else:
        p.add_argument(
            "--preset",
            help=f"start from a recipe: a YAML file or one of {config_mod.list_recipes()} (default: none, the "
            "built-in defaults)",
        )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set finetune.lr=3e-4 (repeatable)",
    )


def _resolve(args: argparse.Namespace, *, section: str | None = "pretrain") -> config_mod.RecipeConfig:
    """Recipe (or defaults) <- flags <- --set overrides."""
    overrides: dict = {}
    flags = {**DATA_FLAGS, **MODEL_FLAGS}
    if section:
        flags |= {k: f"{section}.{v}" for k, v in TRAIN_FLAGS.items()}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "strict", None) and args.command == "run":
        overrides["refine.strict"] = True
    overrides.update(config_mod.parse_override(o) for o in args.set)
    recipe = getattr(args, "recipe", None) or getattr(args, "preset", None)
    cfg = config_mod.load(recipe, overrides)
    from lossguided.models import check_model_name

    check_model_name(cfg.model.name)  # before any data is read: `resnet10` -> did you mean 'resnet10t'?
    return cfg


# -- subcommands ----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from lossguided import runlock, stages
    from lossguided.distributed import get_info

    section = "finetune" if args.init_from else "pretrain"
    cfg = _resolve(args, section=section)
    splits = stages.load_splits(cfg.data)
    out = Path(args.out)
    with runlock.hold(out, enabled=get_info().is_main):  # before config.yaml: a second run must not overwrite it
        _save_config(cfg, out)
        result = stages.train(
            cfg, splits, out_dir=out, section=section, init_from=args.init_from, resume=not args.no_resume
        )
    print(
        json.dumps(
            {
                "out": str(out),
                "epochs": result.epochs_done,
                "best_val_mean_top1_error": result.best_val_error,
                "stopped_early": result.stopped_early,
                "resumed_from_epoch": result.resumed_from,
            }
        )
    )
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    from lossguided import stages
    from lossguided.engine import checkpoint

    if Path(args.out).suffix != ".npz":
        raise config_mod.ConfigError(
            f"--out {args.out}: the loss table is a .npz file; name it {Path(args.out).stem}.npz"
        )
    _refuse_overwriting_inputs(args.out, args.checkpoint, getattr(args, "train", None))
    state = checkpoint.load(args.checkpoint)
    cfg = config_mod.from_dict(state["config"]) if state.get("config") else config_mod.RecipeConfig()
    flags = {**DATA_FLAGS}
    overrides = {key: getattr(args, dest) for dest, key in flags.items() if getattr(args, dest, None) is not None}
    for dest, key in (("epochs", "record.epochs"), ("lr", "record.lr"), ("batch_size", "record.batch_size")):
        if getattr(args, dest) is not None:
            overrides[key] = getattr(args, dest)
    overrides.update(config_mod.parse_override(o) for o in args.set)
    cfg = config_mod.merge(cfg, overrides)
    train = stages.load_splits(cfg.data, classes=checkpoint.classes_of(state)).train
    work = layout.record_work_dir(args.out)
    table = stages.record_losses(
        cfg,
        train,
        checkpoint_path=args.checkpoint,
        out_path=args.out,
        work_dir=work,
        resume=not args.no_resume,
        pred_probs_path=args.pred_probs,
    )
    summary = {"out": args.out, "samples": len(table), "mean_loss": float(table.losses.mean())}
    if args.pred_probs:
        summary["pred_probs"] = args.pred_probs
    if _is_main():
        if args.keep_work:
            summary["work"] = str(work)
        else:
            summary["work_removed_mb"] = round(layout.remove_work_dir(work) / 1e6, 1)
    print(json.dumps(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lossguided.data.sources import load_manifest, make_dataset
    from lossguided.data.transforms import saved_normalization
    from lossguided.engine import checkpoint
    from lossguided.engine.evaluate import evaluate
    from lossguided.models import load_model

    state = checkpoint.load(args.checkpoint)
    cfg = config_mod.from_dict(state["config"]) if state.get("config") else config_mod.RecipeConfig()
    classes = checkpoint.classes_of(state)
    manifest = load_manifest(args.test, split="test", classes=classes, options=_data_options(args, cfg.data))
    model, _ = load_model(state, device=_device())
    dataset = make_dataset(manifest.with_classes(classes), image_size=args.image_size or cfg.data.image_size)
    metrics = evaluate(
        model,
        dataset,
        class_names=classes.names,
        batch_size=args.batch_size,
        top_k=min(args.top_k, len(classes)),
        predictions_csv=args.predictions,
        progress=not args.no_progress,
        loader_kwargs={"workers": args.workers, "persistent_workers": False},
        normalization=saved_normalization(state),  # the mean/std it was trained with, as features use
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _is_main() -> bool:
    from lossguided.distributed import get_info

    return get_info().is_main


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _refuse_overwriting_inputs(out: str, *inputs: str | None) -> None:
    """An --out that is one of the command's inputs would destroy it (`select T.npz --out T.npz`): stop first."""
    target = Path(out).resolve()
    derived = [target.with_suffix(s) for s in (".summary.csv", ".stats.json")]  # what select writes beside OUT
    for given in inputs:
        if given is not None and Path(given).resolve() in (target, *derived):
            raise config_mod.ConfigError(f"--out {out} would overwrite the input {given}; write to another file")


def cmd_select(args: argparse.Namespace) -> int:
    from lossguided.refine.apply import select_to_manifest

    _refuse_overwriting_inputs(args.out, args.losses)
    summary = select_to_manifest(
        args.losses,
        args.out,
        bands=args.bands,
        drop_loss_above=args.drop_loss_above,
        drop_quantile=args.drop_quantile,
        per_class=args.per_class,
        drop_disagreeing=args.drop_disagreeing,
        drop_confident_other=args.drop_confident_other,
        strict=args.strict,
    )
    print(json.dumps(summary))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from lossguided.data.preprocessed import preprocess
    from lossguided.data.sources import load_manifest

    manifest = load_manifest(args.manifest, split="train", options=_data_options(args))
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if args.format == "webdataset":
        from lossguided.data.webdataset_writer import write_webdataset

        summary = write_webdataset(
            manifest,
            args.out,
            image_size=args.image_size,
            quality=args.quality,
            shard_size=args.shard_size,
            workers=workers,
            skip_bad_images=args.skip_bad_images,
        )
    else:
        summary = preprocess(
            manifest,
            args.out,
            image_size=args.image_size,
            storage=args.format,
            quality=args.quality,
            shard_size=args.shard_size,
            workers=workers,
            skip_bad_images=args.skip_bad_images,
        )
    print(json.dumps(summary))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from lossguided.data.sources import load_manifest
    from lossguided.engine import checkpoint
    from lossguided.ensemble.extract import extract_features

    state = checkpoint.load(args.checkpoint)
    cfg = config_mod.from_dict(state["config"]) if state.get("config") else config_mod.RecipeConfig()
    manifest = load_manifest(
        args.data, split="test", classes=checkpoint.classes_of(state), options=_data_options(args, cfg.data)
    )
    fs = extract_features(
        args.checkpoint,
        manifest,
        args.out,
        tta=args.tta,
        dtype=args.dtype,
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
    print(json.dumps({"out": str(args.out), "rows": fs.n_rows, "dim": fs.dim, "n_views": fs.n_views}))
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from lossguided.ensemble.predict import predict_ensemble

    labelled = None
    if args.test:
        from lossguided.data.sources import load_manifest

        labelled = load_manifest(args.test, split="test")
    result = predict_ensemble(args.dirs, out_csv=args.out, top_k=args.top_k, fast=not args.exact, labelled=labelled)
    if "metrics" in result:
        print(json.dumps(result["metrics"], indent=2))
    else:
        print(json.dumps({"out": str(args.out), "rows": len(result["ids"]), "models": len(args.dirs)}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lossguided.engine import checkpoint
    from lossguided.recipe import format_table, run_recipe

    cfg = _resolve(args, section=None)
    metrics = run_recipe(cfg, out_dir=Path(args.out))
    print(format_table(metrics))
    if "ship" in metrics:
        print(metrics["ship"]["verdict"])
    if _is_main():
        freed = 0 if args.keep_optimizer else checkpoint.slim_finished_stages(args.out)
        used = layout.format_bytes(layout.disk_use(args.out))
        print(
            f"{args.out}: {used} on disk"
            + (
                f" ({layout.format_bytes(freed)} of optimizer state dropped from "
                "finished stages; --keep-optimizer keeps it)"
                if freed
                else ""
            )
        )
    return 0


# -- see the data (lossguided.report) ---------------------------------------------------------------------------
def cmd_eda(args: argparse.Namespace) -> int:
    from lossguided.report.eda import format_summary, load_manifest_for_eda, run_eda

    manifest = load_manifest_for_eda(args.manifest, _data_options(args))
    result = run_eda(manifest, args.out, workers=args.workers, listed=args.listed)
    print(format_summary(result))
    print(f"written: {Path(args.out) / 'eda.json'} and the figures and tables beside it")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lossguided.report.html import ReportOptions, write_report

    opts = ReportOptions(
        thumbs_per_class=args.thumbs_per_class,
        max_classes=args.max_classes,
        thumb_size=args.thumb_size,
        page_size=args.page_size,
        workers=args.workers,
    )
    summary = write_report(args.run_dir, args.out, opts, round=args.round)
    print(json.dumps({**summary, "mib": round(summary["bytes"] / 2**20, 2)}))
    return 0


def cmd_suspects(args: argparse.Namespace) -> int:
    from lossguided.losstable import LossTable
    from lossguided.report.suspects import write_suspects

    _refuse_overwriting_inputs(args.out, args.losses)
    print(json.dumps(write_suspects(LossTable.load(args.losses), args.out, per_class=args.per_class, top=args.top)))
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    from lossguided.data.sources import load_manifest
    from lossguided.report.suspects import relabel_manifest

    _refuse_overwriting_inputs(args.out, args.manifest, args.corrections)
    manifest = load_manifest(args.manifest, split="train", options=_data_options(args))
    print(json.dumps(relabel_manifest(manifest, args.corrections, args.out, allow_new_labels=args.allow_new_labels)))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _count_or_all(text: str) -> int | None:
    return None if text == "all" else _positive(text)


def _add_see_data(sub) -> None:
    """eda, report, suspects, relabel: look at the data and the run, and correct labels."""

    p = sub.add_parser(
        "eda",
        help="look at a manifest: class frequencies, image sizes, duplicates, missing images",
        description="Writes OUT/eda.json (the numbers), OUT/class_frequency.png (sorted counts, log "
        "scale, head/tail shares), OUT/image_sizes.png (width/height/aspect from image headers), "
        "OUT/class_counts.csv, OUT/duplicates.csv (identical file contents) and OUT/missing.csv "
        "(images missing or unreadable), and prints a short summary.",
    )
    p.add_argument(
        "manifest", metavar="MANIFEST", help="CSV (path,label[,id]), ImageFolder root or 'fashion-mnist[:split]'"
    )
    p.add_argument("--out", "--output", required=True, help="output folder")
    p.add_argument("--workers", type=_positive, default=8, help="threads reading image files (default 8)")
    p.add_argument("--listed", type=_positive, default=10, help="smallest/largest classes and examples listed")
    _add_builtin_data(p)
    p.set_defaults(func=cmd_eda)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of a run: stages, curves, losses, suspects",
        description="Writes one static HTML file (thumbnails inline, no network): the stages table, "
        "learning curves, the loss histogram with the drop threshold, and per class (worst first, "
        "searchable, paged) the highest-loss samples beside the selected lowest-loss ones. An "
        "unfinished run gives a page that says what is missing. Prints the page size.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder of `lossguided run`")
    p.add_argument("--out", "--output", required=True, help="HTML file to write")
    p.add_argument(
        "--round",
        type=_positive,
        default=None,
        help="refinement round to show (record<R>, refine<R>) (default: the last round whose losses were recorded)",
    )
    p.add_argument("--thumbs-per-class", type=_positive, default=6, help="suspects per class, and as many selected")
    p.add_argument(
        "--max-classes",
        type=_count_or_all,
        default=500,
        help="worst classes that get thumbnails, or 'all' (default 500; ~10 KB a class)",
    )
    p.add_argument("--thumb-size", type=_positive, default=48, help="thumbnail size in px (default 48)")
    p.add_argument("--page-size", type=_positive, default=50, help="classes per page in the browser")
    p.add_argument("--workers", type=_positive, default=4, help="threads reading images")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "suspects",
        help="rank the samples most likely to be mislabelled (highest loss first)",
        description="Writes a CSV (rank, id, path, label, predicted, loss, rank_in_class, class_size"
        "[, true_label], corrected_label). Fill in corrected_label (a class name; DROP removes the "
        "sample; empty keeps it) and pass the file to `lossguided relabel`.",
    )
    p.add_argument("losses", metavar="LOSSES", help="loss table (.npz), e.g. RUN/record1/losses.npz")
    p.add_argument("--out", "--output", required=True, help="CSV to write")
    p.add_argument("--top", type=_positive, help="keep only the N highest losses overall (default: all)")
    p.add_argument("--per-class", type=_positive, help="keep at most N per class (its highest losses) (default: all)")
    p.set_defaults(func=cmd_suspects)

    p = sub.add_parser(
        "relabel",
        help="apply a corrected suspects CSV to a manifest: a new training manifest",
        description="Reads MANIFEST and the corrections (id and corrected_label columns: a class "
        "name relabels, DROP removes, empty keeps) and writes id,path,label for --train. Errors "
        "name the file and row.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="the training manifest the suspects came from")
    p.add_argument("--corrections", required=True, help="the edited CSV of `lossguided suspects`")
    p.add_argument(
        "--out", "--output", required=True, help="new manifest CSV (built-in images are written beside it as PNG)"
    )
    p.add_argument("--allow-new-labels", action="store_true", help="accept corrected labels that are not classes yet")
    _add_builtin_data(p)
    p.set_defaults(func=cmd_relabel)


def _save_config(cfg: config_mod.RecipeConfig, out: Path) -> None:
    import yaml

    from lossguided.io import write_text

    if _is_main():
        write_text(out / "config.yaml", yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))


# -- parser ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossguided",
        formatter_class=_HelpFormatter,
        description="Train image classifiers on noisy, long-tailed labels with loss-guided data refinement.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=_positive_int, default=None, help=_THREADS_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="pre-train (stage 1), or fine-tune with --init-from",
        description="Train a timm model; writes OUT/last.pt, OUT/best.pt, OUT/metrics.jsonl, "
        "OUT/config.yaml. Rerunning the same command resumes from OUT/last.pt.",
    )
    _add_data(p, train_required=True)
    _add_model(p)
    _add_train(p)
    _add_config(p)
    p.add_argument("--out", "--output", required=True, help="run folder")
    p.add_argument(
        "--init-from",
        "--initial-checkpoint",
        help="start from this checkpoint and use the 'finetune' section (default: none, pre-train)",
    )
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "losses",
        help="record each training sample's average loss (trains 1 epoch by default)",
        description="Fine-tune CHECKPOINT for --epochs more epochs (default 1) on all of --train, the paper's "
        "recording pass, and write the per-sample loss table (.npz: id, label, loss, n_records, pred, path). --lr 0 "
        "records the checkpoint's own losses without updating it. The pass works in a folder beside OUT "
        "(runs/losses_record/ for runs/losses.npz; resumable: rerun the same command), removed once the table is "
        "written unless --keep-work.",
    )
    p.add_argument("--checkpoint", required=True, help="the pre-trained model (e.g. RUN/best.pt)")
    _add_data(p, train_required=True)
    p.add_argument("--epochs", type=int, help="epochs of the recording pass, averaged (default: 1, the paper's)")
    p.add_argument(
        "--lr",
        type=float,
        help="lr of the recording pass; 0 records the checkpoint's losses without "
        "updating it (default: the checkpoint's pre-training lr)",
    )
    p.add_argument("--batch-size", "-b", type=int, help="images per batch (default: the checkpoint's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")
    p.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work folder (runs/losses_record/ for runs/losses.npz, with its checkpoints) after the "
        "table is written",
    )
    p.add_argument("--out", "--output", required=True, help="loss table file (.npz)")
    p.add_argument(
        "--pred-probs",
        metavar="PATH",
        help="also write every sample's predicted probabilities of the last recorded epoch: an [N, K] float16 .npy "
        "in the loss table's id order, for cleanlab's find_label_issues (at most 1,000 classes) (default: none)",
    )
    p.add_argument("--no-resume", action="store_true", help="start the recording over even if it was interrupted")
    p.set_defaults(func=cmd_losses)

    p = sub.add_parser(
        "evaluate",
        help="mean top-1 error of a checkpoint on a labelled manifest",
        description="Print the metrics JSON: mean_top1_error (per class, then averaged), "
        "top1_error (per image) and per_class_error.",
    )
    p.add_argument("--checkpoint", required=True, help="a lossguided checkpoint (best.pt, last.pt)")
    p.add_argument("--test", required=True, help="labelled manifest, or 'fashion-mnist' (its test split)")
    p.add_argument("--image-size", "--img-size", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", "-b", type=_positive, default=256, help="images per batch")
    p.add_argument(
        "--workers",
        "-j",
        type=_non_negative,
        default=config_mod.default_workers(),
        help="DataLoader workers for image files (the machine's cores, at most 4)",
    )
    p.add_argument(
        "--predictions",
        metavar="CSV",
        help="also write each image's top-k classes and probabilities: "
        "id,prediction,top2..,prob,prob2.. (default: none)",
    )
    p.add_argument("--top-k", type=_positive, default=5, help="classes per row of --predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_builtin_data(p, _checkpoint_default)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "select",
        help="stage 2: pick the clean, balanced list from a loss table",
        description="Drop high-loss samples, then keep each class's rank bands by loss; writes a "
        "manifest (id,path,label) and OUT.summary.csv with per-class counts.",
    )
    p.add_argument("losses", help="loss table (.npz) from `lossguided losses`")
    refine = config_mod.load("cpu-small").refine  # the default recipe's rule, not the paper's 5 a class
    p.add_argument(
        "--bands",
        nargs="+",
        default=list(refine.bands),
        help="rank bands united: 1-5 6-10 11-15 median, or a-b (the paper: 1-5 with --drop-loss-above 9)",
    )
    p.add_argument(
        "--drop-loss-above",
        type=_threshold_arg,
        default=refine.drop_loss_above,
        help="nats (paper: 9), or 'auto': a threshold per class from a two-component mixture of the "
        "losses, no true labels needed, or 'hybrid': that mixture only in classes whose losses show two modes, and "
        "elsewhere only what is confidently another class (needs the recorded top-5)",
    )
    p.add_argument("--drop-quantile", type=float, help="also drop this top share by loss, e.g. 0.03 (default: none)")
    p.add_argument("--per-class", type=int, help="width of the median band (default: 5)")
    p.add_argument(
        "--drop-disagreeing",
        action="store_true",
        help="also drop samples whose recorded prediction is another class (each class keeps its 5 lowest losses); "
        "purer, but it also drops hard clean samples: measured worse on 20%% symmetric noise",
    )
    p.add_argument(
        "--drop-confident-other",
        action="store_true",
        help="also drop samples that are confidently another class: that class's probability reaches its mean over "
        "the samples labelled with it, and beats the label's (confident learning; each class keeps its 5 lowest); "
        "keeps hard images of rare look-alike classes: measured better on 30%% class-dependent noise, worse on val "
        "on 20%% symmetric",
    )
    p.add_argument("--out", "--output", required=True, help="selected manifest (.csv)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "preprocess",
        help="decode and resize a data set once, for fast training input",
        description="Write MANIFEST's images, decoded and resized to --image-size, into OUT with their "
        "ids, labels and class map; `--train/--val/--test OUT` then read it instead of decoding. "
        "jpeg-shards (default): S x S JPEGs in large shard files, ~20 KB an image at 256, for large "
        "sets; memmap: raw uint8 pixels, exact and fastest, S*S*3 bytes an image, for small sets; "
        "webdataset: WebDataset .tar shards (<id>.jpg/.cls/.json, classes.json, an offsets index "
        "each) that other tools read too. Resumable (jpeg-shards, memmap): rerun the same command "
        "after an interruption.",
    )
    p.add_argument(
        "manifest", metavar="MANIFEST", help="CSV (path,label[,id]), ImageFolder root or 'fashion-mnist[:split]'"
    )
    p.add_argument(
        "--out", "--output", required=True, help="output folder (new or empty, or an unfinished one to resume)"
    )
    p.add_argument("--image-size", type=int, default=256, help="square size (paper: 256)")
    p.add_argument("--format", choices=["jpeg-shards", "memmap", "webdataset"], default="jpeg-shards")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of jpeg-shards (default 90)")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per shard / resumable unit")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded and list them in OUT/bad_images.csv",
    )
    _add_builtin_data(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser(
        "features",
        help="save pre-classifier features (summed over TTA views) for ensembling",
        description="Extract every image's pre-classifier features, summed over the test-time "
        "augmented views, into OUT (features.npy memmap, ids.npy, head.npz, meta.json). "
        "Rerunning continues an interrupted extraction from its last finished chunk.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="manifest to extract (or 'fashion-mnist': its test split)")
    p.add_argument("--out", "--output", required=True, help="feature directory")
    p.add_argument(
        "--tta",
        choices=["none", "hflip", "dihedral8"],
        default="hflip",
        help="test-time views whose features are summed (paper: hflip)",
    )
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=_positive, default=128)
    _add_builtin_data(p, _checkpoint_default)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "ensemble",
        help="combine feature directories of several models into predictions",
        description="Sum the models' logits (features @ W.T / views + b), streamed over rows and "
        "classes, never holding N x K logits; writes id,prediction[,top2..]. With --test, prints "
        "the same metrics JSON as `evaluate`.",
    )
    p.add_argument("dirs", nargs="+", help="feature directories from `lossguided features`")
    p.add_argument("--out", "--output", required=True, help="predictions CSV")
    p.add_argument("--top-k", type=_positive, default=1, help="classes per row (at most the class count)")
    p.add_argument("--test", help="labelled manifest of the same images: print metrics (default: none)")
    p.add_argument("--exact", action="store_true", help="fp32 scan instead of the bf16 scan + exact rescoring")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser(
        "run",
        help="the whole recipe: pre-train, record, select, fine-tune, repeat",
        description="Runs every stage into OUT/<stage>/ and writes OUT/metrics.json; rerunning "
        "skips finished stages and resumes an interrupted one.",
    )
    _add_config(p, positional_recipe=True)
    _add_data(p, where="the recipe's; cpu-small:", defaults=config_mod.load("cpu-small"))
    _add_model(p, where="the recipe's; cpu-small:", defaults=config_mod.load("cpu-small"))
    p.add_argument("--out", "--output", required=True, help="run folder")
    p.add_argument("--strict", action="store_true", default=None, help=STRICT_HELP + " (refine.strict)")
    p.add_argument(
        "--keep-optimizer",
        action="store_true",
        help="keep the optimizer state in finished stages' "
        "checkpoints (by default they keep weights only, 1/3 to 1/4 of the size)",
    )
    p.set_defaults(func=cmd_run)
    _add_see_data(sub)
    for command in sub.choices.values():  # every default in --help; global flags also after the command
        command.formatter_class = _HelpFormatter
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="debug logging",
        )
        command.add_argument("--threads", type=_positive_int, default=argparse.SUPPRESS, help=_THREADS_HELP)
    return parser


_THREADS_HELP = (
    "torch CPU threads (default: the cores this process may use less those busy with other work, at least 1; "
    "OMP_NUM_THREADS counts as a choice). On shared cores more threads than free cores run 2-20x slower"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _threshold_arg(text: str) -> float | str:
    if text in ("auto", "hybrid"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'auto' or 'hybrid', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    from lossguided import signals, threads
    from lossguided.data.manifest import DataError, one_line_message
    from lossguided.distributed import DeviceError, init_distributed, shutdown
    from lossguided.engine.checkpoint import CheckpointError

    previous = signals.install()  # SIGTERM: save at the next step boundary, then stop (exit 143)
    try:
        threads.configure(args.threads)
        if init_distributed().is_main:
            return args.func(args)
        logging.getLogger().setLevel(logging.WARNING)  # under torchrun rank 0 logs and prints; the rest only warn
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            return args.func(args)
    except (DataError, config_mod.ConfigError, CheckpointError, DeviceError) as e:
        print(f"lossguided {args.command}: error: {one_line_message(e)}", file=sys.stderr)
        return 2
    except signals.Preempted as e:
        print(f"lossguided {args.command}: {e}", file=sys.stderr)
        return signals.EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        signals.restore(previous)
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
