"""Does loss-guided refinement work? A Table-2-style comparison on Fashion-MNIST made long-tailed (ratio 100),
with 20% symmetric label noise and again with none, every row with the same model and per-model epoch budget:

* baseline  - stage 1 alone on the noisy labels;
* oracle    - stage 1 on the true labels (the ceiling);
* cleanlab  - cleanlab's `find_label_issues` on out-of-fold predicted probabilities (K-fold), prune, retrain;
* recipe    - our stages: refine (no smoothing/flip), + label smoothing/flip, refine again, + an ensemble of the
              last fine-tune with two more seeds through saved features and TTA (sections 3.5-3.6; the
              recipe's tta setting, `auto` in cpu-small: none or hflip, whichever has the lower val error).

Reports the clean test set's mean top-1 error, the share of the noise gap closed `(baseline - row) /
(baseline - oracle)`, the purity of each training set and the noise AUROC of the average loss, as Markdown.
Every row is cached under --out, so a rerun only computes what is missing. Settings are chosen on the val split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from lossguided import config as config_mod
from lossguided import stages
from lossguided.data.datasets import make_dataset
from lossguided.engine import checkpoint
from lossguided.io import write_json
from lossguided.metrics import auroc
from lossguided.models import create_model
from lossguided.recipe import run_recipe


def cached(path: Path, fn):
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = fn() | {"wall_s": round(time.perf_counter() - start, 1)}
    write_json(path, result)
    return result


def evaluate_row(name: str, ckpt: Path, splits: stages.Splits, cfg, **extra) -> dict:
    row = {"name": name, **extra}
    for split, m in (("val", splits.val), ("test", splits.test)):
        metrics = stages.evaluate_checkpoint(ckpt, m, image_size=cfg.data.image_size)
        row[f"{split}_mean_top1_error"] = metrics["mean_top1_error"]
    return row


@torch.no_grad()
def predict_probs(ckpt: Path, manifest, cfg) -> np.ndarray:
    """Softmax probabilities [N, K] in manifest order (for cleanlab)."""
    from lossguided.data.transforms import BatchTransform

    state = checkpoint.load(ckpt)
    model = create_model(cfg.model.name, num_classes=len(manifest.classes))
    model.load_state_dict(state["model"])
    model.eval()
    ds = make_dataset(manifest, image_size=cfg.data.image_size)
    t = BatchTransform().eval()
    out = []
    for s in range(0, len(ds), 512):
        images, _, _ = ds.__getitems__(list(range(s, min(s + 512, len(ds)))))
        out.append(torch.softmax(model(t(images)), 1))
    return torch.cat(out).numpy()


def run_cleanlab(cfg, splits: stages.Splits, out: Path, *, folds: int) -> dict:
    from cleanlab.filter import find_label_issues

    train = splits.train
    rng = np.random.default_rng(cfg.pretrain.seed)
    fold_of = rng.permutation(len(train)) % folds
    probs = np.zeros((len(train), len(train.classes)), dtype=np.float32)
    for f in range(folds):
        fit_idx, held = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        fold_dir = out / f"fold{f}"
        stages.train(cfg, stages.Splits(train.subset(fit_idx), splits.val, None), out_dir=fold_dir)
        probs[held] = predict_probs(fold_dir / "best.pt", train.subset(held), cfg)
    issues = find_label_issues(train.labels, probs)
    keep = np.flatnonzero(~issues)
    stages.train(cfg, stages.Splits(train.subset(keep), splits.val, None), out_dir=out / "retrain")
    noisy = train.labels != train.true_labels
    extra = {"train_samples": int(len(keep)), "purity": float(1 - noisy[keep].mean()),
             "epochs": cfg.pretrain.epochs * (folds + 1)}  # fmt: skip
    if noisy.any():
        extra["flagged_precision"] = float(noisy[issues].mean()) if issues.any() else float("nan")
        extra["flagged_recall"] = float(issues[noisy].mean())
        extra["loss_auroc"] = auroc(1 - probs[np.arange(len(train)), train.labels], noisy)
    return evaluate_row("cleanlab", out / "retrain" / "best.pt", splits, cfg, **extra)


def run_setting(recipe: str, noise_rate: float, out: Path, overrides: list[str], folds: int,
                ensemble_seeds: list[int]) -> list[dict]:  # fmt: skip
    seeds = f"ensemble.seeds=[{','.join(map(str, ensemble_seeds))}]"
    cfg = config_mod.load(recipe, [seeds, *overrides, f"data.noise_rate={noise_rate}"])
    splits = stages.load_splits(cfg.data)
    rows = []
    metrics = run_recipe(cfg, out_dir=out / "recipe")
    stage_rows = {s["name"]: s for s in metrics["stages"]}
    base = stage_rows["pretrain"]
    rows.append({"name": "baseline (noisy labels)", "train_samples": base["train_samples"],
                 "purity": float(1 - (splits.train.labels != splits.train.true_labels).mean()),
                 "val_mean_top1_error": base["val_mean_top1_error"],
                 "test_mean_top1_error": base["test_mean_top1_error"], "epochs": cfg.pretrain.epochs})  # fmt: skip

    def oracle():
        true = dataclasses.replace(splits.train, labels=splits.train.true_labels)
        if np.array_equal(true.labels, splits.train.labels):  # no noise: the same run as the baseline
            return {**rows[0], "name": "oracle (true labels)"}
        stages.train(cfg, stages.Splits(true, splits.val, None), out_dir=out / "oracle")
        return evaluate_row("oracle (true labels)", out / "oracle" / "best.pt", splits, cfg,
                            train_samples=len(true), purity=1.0, epochs=cfg.pretrain.epochs)  # fmt: skip

    rows.append(cached(out / "oracle.json", oracle))
    rows.append(cached(out / "cleanlab.json", lambda: run_cleanlab(cfg, splits, out / "cleanlab", folds=folds)))
    fold_sizes = np.bincount(np.random.default_rng(cfg.pretrain.seed).permutation(len(splits.train)) % folds)
    rows[-1]["images_seen"] = int(sum((len(splits.train) - fold_sizes[f]) * _epochs_run(out / "cleanlab" / f"fold{f}")
                                      for f in range(folds)) + rows[-1]["train_samples"] * _epochs_run(
                                          out / "cleanlab" / "retrain"))  # fmt: skip

    def plain_refine():
        """Round 1 without smoothing or flips: the Table 2 row before "+ label smoothing / augmentation"."""
        plain = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, smoothing=0.0, flip=False))
        ids = np.loadtxt(out / "recipe" / "refine1" / "selected.csv", delimiter=",", skiprows=1, usecols=0,
                         dtype=np.int64, ndmin=1)  # fmt: skip
        sub = stages.Splits(splits.train.select_ids(ids), splits.val, None)
        stages.train(
            plain, sub, out_dir=out / "refine_plain", section="finetune", init_from=out / "recipe" / base["checkpoint"]
        )
        r1 = stage_rows["refine1"]
        return evaluate_row("recipe: + loss-guided refinement", out / "refine_plain" / "best.pt", splits, cfg,
                            train_samples=r1["train_samples"], purity=r1.get("purity"),
                            loss_auroc=r1.get("loss_auroc"))  # fmt: skip

    rows.append(cached(out / "refine_plain.json", plain_refine))
    n = len(splits.train)
    seen = n * (cfg.pretrain.epochs + cfg.record.epochs)  # training images processed, the honest budget
    rows[0]["images_seen"] = n * cfg.pretrain.epochs
    rows[1]["images_seen"] = n * cfg.pretrain.epochs
    rows[3]["images_seen"] = seen + _epochs_run(out / "refine_plain") * rows[3]["train_samples"]
    for r in range(1, cfg.refine.rounds + 1):
        s = stage_rows[f"refine{r}"]
        name = "recipe: + label smoothing / flip" if r == 1 else f"recipe: + refinement again (round {r})"
        seen += _epochs_run(out / "recipe" / f"refine{r}") * s["train_samples"] + (
            n * cfg.record.epochs if r > 1 else 0
        )
        rows.append({"name": name, **{k: s.get(k) for k in ("train_samples", "purity", "loss_auroc",
                     "val_mean_top1_error", "test_mean_top1_error")}, "images_seen": seen})  # fmt: skip

    def longer_baseline():
        """Stage 1 on the noisy labels for as many images as the whole recipe saw: is the gain just more training?"""
        epochs = max(cfg.pretrain.epochs, round(seen / n))
        longer = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, epochs=epochs))
        stages.train(longer, stages.Splits(splits.train, splits.val, None), out_dir=out / "baseline_longer")
        return evaluate_row(f"baseline, {epochs} epochs (the recipe's budget)", out / "baseline_longer" / "best.pt",
                            splits, cfg, train_samples=n, purity=rows[0]["purity"], images_seen=n * epochs)  # fmt: skip

    rows.insert(1, cached(out / "baseline_longer.json", longer_baseline))
    ens = next((s for name, s in stage_rows.items() if name.startswith("ensemble")), None)
    if ens is not None:  # after the longer baseline, which gets one model's budget
        seen += sum(_epochs_run(out / "recipe" / "ensemble" / f"seed{s}") for s in ens["seeds"]) * ens["train_samples"]
        tta = ens.get("tta_used", ens["tta"]) + (" TTA, chosen on val" if ens["tta"] == "auto" else " TTA")
        rows.append({"name": f"recipe: + {len(ens['models'])} models ensemble ({tta})",
                     **{k: ens.get(k) for k in ("train_samples", "val_mean_top1_error", "test_mean_top1_error")},
                     "purity": rows[-1]["purity"], "loss_auroc": rows[-1]["loss_auroc"],
                     "images_seen": seen})  # fmt: skip

    b, o = rows[0]["test_mean_top1_error"], rows[2]["test_mean_top1_error"]
    for row in rows:
        row["gap_closed"] = (b - row["test_mean_top1_error"]) / (b - o) if b - o > 1e-9 else None
    return rows


def _epochs_run(run_dir: Path) -> int:
    return len((run_dir / "metrics.jsonl").read_text().splitlines())


def to_markdown(title: str, rows: list[dict]) -> str:
    f = lambda v, p=4: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{p}f}"  # noqa: E731
    lines = [f"**{title}**", "",
             "| row | train samples | purity | noise AUROC | images seen | val mean top-1 err | test mean top-1 err "
             "| gap closed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        gap = "-" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
        lines.append(f"| {r['name']} | {r.get('train_samples', '-')} | {f(r.get('purity'), 3)} | "
                     f"{f(r.get('loss_auroc'), 3)} | {r.get('images_seen', '-')} | {f(r.get('val_mean_top1_error'))} | "
                     f"{f(r.get('test_mean_top1_error'))} | {gap} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cpu-small", help="recipe name or YAML (default cpu-small)")
    p.add_argument("--out", default="runs/bench-recipe", help="cache folder for every row")
    p.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.0], help="noise rates to run")
    p.add_argument("--folds", type=int, default=3, help="cleanlab cross-validation folds")
    p.add_argument("--ensemble-seeds", type=int, nargs="*", default=[1, 2], help="extra seeds; none: no ensemble row")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    args = p.parse_args()
    tables = []
    for rate in args.noise:
        rows = run_setting(args.recipe, rate, Path(args.out) / f"noise{rate:g}", args.set, args.folds,
                           args.ensemble_seeds)  # fmt: skip
        tables.append(to_markdown(f"Fashion-MNIST, imbalance ratio 100, {rate:.0%} symmetric noise", rows))
        print(tables[-1], flush=True)
    write_json(Path(args.out) / "tables.json", {"markdown": tables})


if __name__ == "__main__":
    main()
