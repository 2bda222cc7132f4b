"""Command line: each subcommand maps its flags onto the config schema (dotted overrides) and calls a library
function. This is the only module that parses arguments."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lossguided import config as config_mod

log = logging.getLogger("lossguided")

# flag dest -> dotted config key; a flag left unset leaves the recipe's value alone
DATA_FLAGS = {
    "train": "data.train", "val": "data.val", "test": "data.test", "image_size": "data.image_size",
    "data_dir": "data.data_dir", "imbalance_ratio": "data.imbalance_ratio", "noise_rate": "data.noise_rate",
    "noise_kind": "data.noise_kind", "data_seed": "data.data_seed", "train_limit": "data.train_limit",
    "workers": "data.workers", "skip_bad_images": "data.skip_bad_images",
}  # fmt: skip
MODEL_FLAGS = {"model": "model.name", "pretrained": "model.pretrained", "pretrained_path": "model.pretrained_path"}
TRAIN_FLAGS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "optimizer": "optimizer", "smoothing": "smoothing",
    "flip": "flip", "patience": "patience", "seed": "seed", "weight_decay": "weight_decay",
}  # fmt: skip


def _add_data(p: argparse.ArgumentParser, *, train_required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--train", required=train_required, help="training manifest: CSV (path,label[,id]), ImageFolder "
                   "root, or 'fashion-mnist' (long-tailed, noisy, built in)")  # fmt: skip
    g.add_argument("--val", help="validation manifest (default with fashion-mnist: its clean val split)")
    g.add_argument("--test", help="test manifest (default with fashion-mnist: its test split)")
    g.add_argument("--image-size", type=int, help="square input size (paper: 256)")
    g.add_argument("--workers", type=int, help="DataLoader workers for image files")
    g.add_argument("--skip-bad-images", action="store_true", default=None, help="skip unreadable images")
    f = p.add_argument_group("fashion-mnist (built-in benchmark data)")
    f.add_argument("--data-dir", help="folder of the IDX files (default /usr/share/datasets/fashion-mnist)")
    f.add_argument("--imbalance-ratio", type=float, help="largest / smallest class size (default 100)")
    f.add_argument("--noise-rate", type=float, help="share of wrong labels (default 0.2)")
    f.add_argument("--noise-kind", choices=["symmetric", "pairflip"])
    f.add_argument("--data-seed", type=int, help="seed of the long tail and the noise")
    f.add_argument("--train-limit", type=int, help="keep only this many training samples (quick runs)")


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="timm model name, e.g. resnest101e, resnet101, resnet10t")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet weights through timm (needs the hub)")  # fmt: skip
    g.add_argument("--pretrained-path", help="local ImageNet weights file (.safetensors/.pth)")


def _add_train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="paper: 24")
    g.add_argument("--lr", type=float, help="initial lr (paper: 1e-4), decayed per batch to lr/10 by eq. (2)")
    g.add_argument("--optimizer", help="timm optimizer name (default lookahead_radam = Ranger)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--smoothing", type=float, help="label smoothing eps of eq. (1) (paper: 0.2 in fine-tuning)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="horizontal flip p=0.5")
    g.add_argument("--patience", type=int, help="early stop after N epochs without val improvement")
    g.add_argument("--seed", type=int)


def _add_config(p: argparse.ArgumentParser, *, positional_recipe: bool = False) -> None:
    if positional_recipe:
        p.add_argument("recipe", nargs="?", default="cpu-small",
                       help=f"recipe YAML or shipped name {config_mod.list_recipes()} (default cpu-small)")  # fmt: skip
    else:
        p.add_argument("--preset", help=f"start from a recipe: a YAML file or one of {config_mod.list_recipes()}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set finetune.lr=3e-4 (repeatable)")  # fmt: skip


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
    overrides.update(config_mod.parse_override(o) for o in args.set)
    recipe = getattr(args, "recipe", None) or getattr(args, "preset", None)
    return config_mod.load(recipe, overrides)


# -- subcommands ----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from lossguided import stages

    section = "finetune" if args.init_from else "pretrain"
    cfg = _resolve(args, section=section)
    splits = stages.load_splits(cfg.data)
    out = Path(args.out)
    _save_config(cfg, out)
    result = stages.train(cfg, splits, out_dir=out, section=section, init_from=args.init_from,
                          resume=not args.no_resume)  # fmt: skip
    print(json.dumps({"out": str(out), "epochs": result.epochs_done, "best_val_mean_top1_error": result.best_val_error,
                      "stopped_early": result.stopped_early, "resumed_from_epoch": result.resumed_from}))  # fmt: skip
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    from lossguided import stages
    from lossguided.engine import checkpoint

    state = checkpoint.load(args.checkpoint)
    cfg = config_mod.from_dict(state["config"]) if state.get("config") else config_mod.RecipeConfig()
    flags = {**DATA_FLAGS}
    overrides = {key: getattr(args, dest) for dest, key in flags.items() if getattr(args, dest, None) is not None}
    for dest, key in (("epochs", "record.epochs"), ("lr", "record.lr"), ("batch_size", "record.batch_size")):
        if getattr(args, dest) is not None:
            overrides[key] = getattr(args, dest)
    overrides.update(config_mod.parse_override(o) for o in args.set)
    merged = config_mod.to_dict(cfg)
    for k, v in overrides.items():
        config_mod._set_dotted(merged, k, v)
    cfg = config_mod.from_dict(merged)
    train = stages.load_splits(cfg.data, classes=checkpoint.classes_of(state)).train
    table = stages.record_losses(cfg, train, checkpoint_path=args.checkpoint, out_path=args.out)
    print(json.dumps({"out": args.out, "samples": len(table), "mean_loss": float(table.losses.mean())}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lossguided import stages
    from lossguided.data.sources import load_manifest
    from lossguided.engine import checkpoint

    state = checkpoint.load(args.checkpoint)
    cfg = config_mod.from_dict(state["config"]) if state.get("config") else config_mod.RecipeConfig()
    opts = stages.fashion_mnist_options(cfg.data)
    manifest = load_manifest(args.test, split="test", classes=checkpoint.classes_of(state),
                             fashion_mnist_options=opts)  # fmt: skip
    metrics = stages.evaluate_checkpoint(args.checkpoint, manifest, image_size=args.image_size)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from lossguided.refine.apply import select_to_manifest

    summary = select_to_manifest(args.losses, args.out, bands=args.bands, drop_loss_above=args.drop_loss_above,
                                 drop_quantile=args.drop_quantile, per_class=args.per_class)  # fmt: skip
    print(json.dumps(summary))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lossguided.recipe import run_recipe

    cfg = _resolve(args, section=None)
    metrics = run_recipe(cfg, out_dir=Path(args.out))
    from lossguided.recipe import format_table

    print(format_table(metrics))
    return 0


def _save_config(cfg: config_mod.RecipeConfig, out: Path) -> None:
    import yaml

    from lossguided.engine.distributed import get_info
    from lossguided.io import write_text

    if get_info().is_main:
        write_text(out / "config.yaml", yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))


# -- parser ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossguided",
        description="Train image classifiers on noisy, long-tailed labels with loss-guided data refinement.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="pre-train (stage 1), or fine-tune with --init-from",
                       description="Train a timm model; writes OUT/last.pt, OUT/best.pt, OUT/metrics.jsonl, "
                       "OUT/config.yaml. Rerunning the same command resumes from OUT/last.pt.")  # fmt: skip
    _add_data(p, train_required=True)
    _add_model(p)
    _add_train(p)
    _add_config(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--init-from", help="start from this checkpoint and use the 'finetune' section")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("losses", help="record each training sample's average loss",
                       description="Fine-tune CHECKPOINT for --epochs more epochs on all of --train (the paper's "
                       "recording pass; --lr 0 records without updating) and write the per-sample loss table "
                       "(.npz: id, label, loss, n_records, pred, path).")  # fmt: skip
    p.add_argument("--checkpoint", required=True)
    _add_data(p, train_required=True)
    p.add_argument("--epochs", type=int, help="epochs to average over (default 1)")
    p.add_argument("--lr", type=float, help="lr of the recording pass (default: the checkpoint's pre-training lr)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="loss table file (.npz)")
    p.set_defaults(func=cmd_losses)

    p = sub.add_parser("evaluate", help="mean top-1 error of a checkpoint on a labelled manifest",
                       description="Print the metrics JSON: mean_top1_error (per class, then averaged), "
                       "top1_error (per image) and per_class_error.")  # fmt: skip
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--test", required=True, help="labelled manifest, or 'fashion-mnist' (its test split)")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("select", help="stage 2: pick the clean, balanced list from a loss table",
                       description="Drop high-loss samples, then keep each class's rank bands by loss; writes a "
                       "manifest (id,path,label) and OUT.summary.csv with per-class counts.")  # fmt: skip
    p.add_argument("losses", help="loss table (.npz) from `lossguided losses`")
    p.add_argument("--bands", nargs="+", default=["1-5"], help="rank bands united: 1-5 6-10 11-15 median, or a-b")
    p.add_argument("--drop-loss-above", type=float, default=9.0, help="paper: 9 (use a quantile for few classes)")
    p.add_argument("--drop-quantile", type=float, help="also drop this top share by loss, e.g. 0.03")
    p.add_argument("--per-class", type=int, help="width of the median band")
    p.add_argument("--out", required=True, help="selected manifest (.csv)")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("run", help="the whole recipe: pre-train, record, select, fine-tune, repeat",
                       description="Runs every stage into OUT/<stage>/ and writes OUT/metrics.json; rerunning "
                       "skips finished stages and resumes an interrupted one.")  # fmt: skip
    _add_config(p, positional_recipe=True)
    _add_data(p)
    _add_model(p)
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    from lossguided.data.manifest import DataError
    from lossguided.engine.checkpoint import CheckpointError
    from lossguided.engine.distributed import init_distributed

    try:
        init_distributed()
        return args.func(args)
    except (DataError, config_mod.ConfigError, CheckpointError) as e:
        print(f"lossguided {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
