"""Command line: each subcommand maps its flags onto the config schema (dotted overrides) and calls a library
function. This is the only module that parses arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
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
    "save_every_steps": "save_every_steps",
}  # fmt: skip


def _add_data(p: argparse.ArgumentParser, *, train_required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--train", required=train_required, help="training manifest: CSV (path,label[,id]), ImageFolder "
                   "root, a `lossguided preprocess` folder, or 'fashion-mnist' (long-tailed, noisy, built in)"
                   )  # fmt: skip
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
    g.add_argument("--save-every-steps", type=int, metavar="N",
                   help="also checkpoint after every N batches of an epoch (a kill then loses minutes)")  # fmt: skip


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
    cfg = config_mod.merge(cfg, overrides)
    train = stages.load_splits(cfg.data, classes=checkpoint.classes_of(state)).train
    table = stages.record_losses(cfg, train, checkpoint_path=args.checkpoint, out_path=args.out,
                                 resume=not args.no_resume)  # fmt: skip
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


def cmd_preprocess(args: argparse.Namespace) -> int:
    from lossguided.data.preprocessed import preprocess
    from lossguided.data.sources import load_manifest

    manifest = load_manifest(args.manifest, split="train")
    summary = preprocess(manifest, args.out, image_size=args.image_size, storage=args.format, quality=args.quality,
                         shard_size=args.shard_size, workers=args.workers if args.workers is not None else
                         (os.cpu_count() or 1), skip_bad_images=args.skip_bad_images)  # fmt: skip
    print(json.dumps(summary))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from lossguided import stages
    from lossguided.data.sources import load_manifest
    from lossguided.engine import checkpoint
    from lossguided.ensemble.extract import extract_features

    state = checkpoint.load(args.checkpoint)
    cfg = config_mod.from_dict(state["config"]) if state.get("config") else config_mod.RecipeConfig()
    manifest = load_manifest(args.data, split="test", classes=checkpoint.classes_of(state),
                             fashion_mnist_options=stages.fashion_mnist_options(cfg.data))  # fmt: skip
    fs = extract_features(args.checkpoint, manifest, args.out, tta=args.tta, dtype=args.dtype,
                          image_size=args.image_size, batch_size=args.batch_size)  # fmt: skip
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
    from lossguided.recipe import format_table, run_recipe

    cfg = _resolve(args, section=None)
    metrics = run_recipe(cfg, out_dir=Path(args.out))
    print(format_table(metrics))
    return 0


# -- see the data (lossguided.report) ---------------------------------------------------------------------------
def _fashion_mnist_flags(args: argparse.Namespace):
    from lossguided.report.images import options_from_config

    keys = ("data_dir", "imbalance_ratio", "noise_rate", "noise_kind", "data_seed", "train_limit")
    return options_from_config({k: getattr(args, k) for k in keys if getattr(args, k, None) is not None})


def cmd_eda(args: argparse.Namespace) -> int:
    from lossguided.report.eda import format_summary, load_manifest_for_eda, run_eda

    manifest = load_manifest_for_eda(args.manifest, _fashion_mnist_flags(args))
    result = run_eda(manifest, args.out, workers=args.workers, listed=args.listed)
    print(format_summary(result))
    print(f"written: {Path(args.out) / 'eda.json'} and the figures and tables beside it")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lossguided.report.html import ReportOptions, write_report

    opts = ReportOptions(thumbs_per_class=args.thumbs_per_class, max_classes=args.max_classes,
                         thumb_size=args.thumb_size, page_size=args.page_size, workers=args.workers)  # fmt: skip
    summary = write_report(args.run_dir, args.out, opts, round=args.round)
    print(json.dumps({**summary, "mib": round(summary["bytes"] / 2**20, 2)}))
    return 0


def cmd_suspects(args: argparse.Namespace) -> int:
    from lossguided.losstable import LossTable
    from lossguided.report.suspects import write_suspects

    print(json.dumps(write_suspects(LossTable.load(args.losses), args.out, per_class=args.per_class, top=args.top)))
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    from lossguided.data.sources import load_manifest
    from lossguided.report.suspects import relabel_manifest

    manifest = load_manifest(args.manifest, split="train", fashion_mnist_options=_fashion_mnist_flags(args))
    print(json.dumps(relabel_manifest(manifest, args.corrections, args.out, allow_new_labels=args.allow_new_labels)))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count_or_all(text: str) -> int | None:
    return None if text == "all" else _positive(text)


def _add_see_data(sub) -> None:
    """eda, report, suspects, relabel: look at the data and the run, and correct labels."""

    def fashion_mnist_group(p: argparse.ArgumentParser) -> None:
        f = p.add_argument_group("fashion-mnist (when MANIFEST is 'fashion-mnist[:split]')")
        f.add_argument("--data-dir", help="folder of the IDX files (default /usr/share/datasets/fashion-mnist)")
        f.add_argument("--imbalance-ratio", type=float, help="largest / smallest class size (default 100)")
        f.add_argument("--noise-rate", type=float, help="share of wrong labels (default 0.2)")
        f.add_argument("--noise-kind", choices=["symmetric", "pairflip"])
        f.add_argument("--data-seed", type=int, help="seed of the long tail and the noise")
        f.add_argument("--train-limit", type=int, help="keep only this many training samples")

    p = sub.add_parser("eda", help="look at a manifest: class frequencies, image sizes, duplicates, missing images",
                       description="Writes OUT/eda.json (the numbers), OUT/class_frequency.png (sorted counts, log "
                       "scale, head/tail shares), OUT/image_sizes.png (width/height/aspect from image headers), "
                       "OUT/class_counts.csv, OUT/duplicates.csv (identical file contents) and OUT/missing.csv "
                       "(images missing or unreadable), and prints a short summary.")  # fmt: skip
    p.add_argument("manifest", metavar="MANIFEST", help="CSV (path,label[,id]), ImageFolder root or "
                   "'fashion-mnist[:split]'")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=_positive, default=8, help="threads reading image files (default 8)")
    p.add_argument("--listed", type=_positive, default=10, help="smallest/largest classes and examples listed")
    fashion_mnist_group(p)
    p.set_defaults(func=cmd_eda)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: stages, curves, losses, suspects",
                       description="Writes one static HTML file (thumbnails inline, no network): the stages table, "
                       "learning curves, the loss histogram with the drop threshold, and per class (worst first, "
                       "searchable, paged) the highest-loss samples beside the selected lowest-loss ones. An "
                       "unfinished run gives a page that says what is missing. Prints the page size.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder of `lossguided run`")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--round", type=_positive, default=1, help="refinement round to show (record<R>, refine<R>)")
    p.add_argument("--thumbs-per-class", type=_positive, default=6, help="suspects per class, and as many selected")
    p.add_argument("--max-classes", type=_count_or_all, default=500,
                   help="worst classes that get thumbnails, or 'all' (default 500; ~10 KB a class)")  # fmt: skip
    p.add_argument("--thumb-size", type=_positive, default=48, help="thumbnail size in px (default 48)")
    p.add_argument("--page-size", type=_positive, default=50, help="classes per page in the browser")
    p.add_argument("--workers", type=_positive, default=4, help="threads reading images")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("suspects", help="rank the samples most likely to be mislabelled (highest loss first)",
                       description="Writes a CSV (rank, id, path, label, predicted, loss, rank_in_class, class_size"
                       "[, true_label], corrected_label). Fill in corrected_label (a class name; DROP removes the "
                       "sample; empty keeps it) and pass the file to `lossguided relabel`.")  # fmt: skip
    p.add_argument("losses", metavar="LOSSES", help="loss table (.npz), e.g. RUN/record1/losses.npz")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--top", type=_positive, help="keep only the N highest losses overall")
    p.add_argument("--per-class", type=_positive, help="keep at most N per class (its highest losses)")
    p.set_defaults(func=cmd_suspects)

    p = sub.add_parser("relabel", help="apply a corrected suspects CSV to a manifest: a new training manifest",
                       description="Reads MANIFEST and the corrections (id and corrected_label columns: a class "
                       "name relabels, DROP removes, empty keeps) and writes id,path,label for --train. Errors "
                       "name the file and row.")  # fmt: skip
    p.add_argument("manifest", metavar="MANIFEST", help="the training manifest the suspects came from")
    p.add_argument("--corrections", required=True, help="the edited CSV of `lossguided suspects`")
    p.add_argument("--out", required=True, help="new manifest CSV (built-in images are written beside it as PNG)")
    p.add_argument("--allow-new-labels", action="store_true", help="accept corrected labels that are not classes yet")
    fashion_mnist_group(p)
    p.set_defaults(func=cmd_relabel)


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
    p.add_argument("--no-resume", action="store_true", help="start the recording over even if it was interrupted")
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

    p = sub.add_parser("preprocess", help="decode and resize a data set once, for fast training input",
                       description="Write MANIFEST's images, decoded and resized to --image-size, into OUT with their "
                       "ids, labels and class map; `--train/--val/--test OUT` then read it instead of decoding. "
                       "jpeg-shards (default): S x S JPEGs in large shard files, ~20 KB an image at 256, for large "
                       "sets; memmap: raw uint8 pixels, exact and fastest, S*S*3 bytes an image, for small sets. "
                       "Resumable: rerun the same command after an interruption.")  # fmt: skip
    p.add_argument("manifest", metavar="MANIFEST", help="CSV (path,label[,id]), ImageFolder root or "
                   "'fashion-mnist[:split]'")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (new or empty, or an unfinished one to resume)")
    p.add_argument("--image-size", type=int, default=256, help="square size (paper: 256)")
    p.add_argument("--format", choices=["jpeg-shards", "memmap"], default="jpeg-shards")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of jpeg-shards (default 90)")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per shard / resumable unit")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images that cannot be decoded and list them in OUT/bad_images.csv")  # fmt: skip
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("features", help="save pre-classifier features (summed over TTA views) for ensembling",
                       description="Extract every image's pre-classifier features, summed over the test-time "
                       "augmented views, into OUT (features.npy memmap, ids.npy, head.npz, meta.json). "
                       "Rerunning continues an interrupted extraction from its last finished chunk.")  # fmt: skip
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="manifest to extract (or 'fashion-mnist': its test split)")
    p.add_argument("--out", required=True, help="feature directory")
    p.add_argument("--tta", choices=["none", "hflip", "dihedral8"], default="hflip",
                   help="test-time views whose features are summed (paper: hflip)")  # fmt: skip
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=_positive, default=128)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("ensemble", help="combine feature directories of several models into predictions",
                       description="Sum the models' logits (features @ W.T / views + b), streamed over rows and "
                       "classes, never holding N x K logits; writes id,prediction[,top2..]. With --test, prints "
                       "the same metrics JSON as `evaluate`.")  # fmt: skip
    p.add_argument("dirs", nargs="+", help="feature directories from `lossguided features`")
    p.add_argument("--out", required=True, help="predictions CSV")
    p.add_argument("--top-k", type=_positive, default=1, help="classes per row (at most the class count)")
    p.add_argument("--test", help="labelled manifest of the same images: print metrics")
    p.add_argument("--exact", action="store_true", help="fp32 scan instead of the bf16 scan + exact rescoring")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("run", help="the whole recipe: pre-train, record, select, fine-tune, repeat",
                       description="Runs every stage into OUT/<stage>/ and writes OUT/metrics.json; rerunning "
                       "skips finished stages and resumes an interrupted one.")  # fmt: skip
    _add_config(p, positional_recipe=True)
    _add_data(p)
    _add_model(p)
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=cmd_run)
    _add_see_data(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    from lossguided.data.manifest import DataError
    from lossguided.engine.checkpoint import CheckpointError
    from lossguided.engine.distributed import init_distributed, shutdown

    try:
        if init_distributed().is_main:
            return args.func(args)
        logging.getLogger().setLevel(logging.WARNING)  # under torchrun rank 0 logs and prints; the rest only warn
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            return args.func(args)
    except (DataError, config_mod.ConfigError, CheckpointError) as e:
        print(f"lossguided {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
