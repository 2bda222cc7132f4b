"""Does loss-guided refinement work, read as a skeptical reviewer would? Benchmark v2 on Fashion-MNIST made
long-tailed (ratio 100), resnet10t at 32 px (the cpu-small recipe), every row with training seeds, mean +- sd.

Settings: 20% symmetric noise; 30% class-dependent noise toward each class's most-confused class (the confusion of
a model trained on the clean long-tailed data, scored on the held-out val split); no noise; and the 20% setting with
a noisy val split (checkpoint choice, early stopping and every `auto` choice then see only noisy labels).

Rows (all start from the same data; a row's seed sets every training seed, the data stay fixed):
* baseline          - stage 1 on the noisy labels for the recipe's budget of epochs (its images seen / N);
* oracle (plain)    - stage 1 on the true labels (the pre-training of the matched oracle);
* matched oracle    - the whole recipe (auto threshold) on the true labels: the ceiling for "gap closed";
* cleanlab          - its strongest fair setting: out-of-fold probabilities from 5 stratified folds trained at the
                      pre-training epochs, `filter_by` chosen on val (seed 0) among cleanlab's methods, then exactly
                      the recipe's downstream: from the same noisy pre-trained checkpoint, the same per-class cap
                      (1,000 most confident), smoothing, flips, epochs, patience, and a second round whose
                      probabilities are re-estimated out of fold (5 folds, one recording-style epoch each from the
                      round-1 model);
* paper's rule      - bands 1-5, 6-10, 11-15 (the median fallback), drop at 9 nats scaled to K = 10:
                      9 * ln 10 / ln 50,030 = 1.915;
* recipe, auto      - the cpu-small recipe with `refine.drop_loss_above: auto` (per-class mixture, no true labels);
* recipe, 1.5       - the same with the fixed 1.5 nats of the first benchmark;
* ensemble          - recipe auto + two more fine-tune seeds through saved features, TTA chosen on val;
* rounds3           - recipe auto with a third record/refine round (rounds 1-2 shared with the auto row);
* oof               - recipe auto whose first recording is out of fold (`record.folds: 2`): two models, each
                      pre-trained on half the data, score the half they never saw;
* lr0               - recipe auto whose second recording scores the round-1 model without updates
                      (`record.later_rounds_lr: 0`): it trained on the selected list only;
* heldout           - both: out-of-fold first recording, second recording without updates;
* confident         - the recipe with confident learning's rule on its recorded probabilities instead of the loss
                      mixture (`refine.drop_confident_other`, `drop_loss_above: null`);
* disagree          - recipe auto that also drops samples whose recorded prediction is another class
                      (`refine.drop_disagreeing`; each class keeps its 5 lowest losses);
* hybrid            - the per-class mixture only where a class shows two modes (its clean mode the majority),
                      elsewhere only what is confidently another class, never the global cut
                      (`refine.drop_loss_above: hybrid`);
* la / hybrid_la    - recipe auto (hybrid) + post-hoc logit adjustment (`refine.logit_adjust: auto`, tau chosen on
                      the selection split through `data.choose`); cleanlab_la: cleanlab's final model, the same way;
* relabel(_la)      - recipe auto whose fine-tunes also take the dropped samples that are confidently another
                      class (top-1 at or above that class's mean self-probability and 0.5) under that class
                      (`refine.relabel_confident`), without and with the logit adjustment;
* reset / imprint   - recipe auto whose fine-tunes start with a new classifier (`finetune.head: reset`) or one
                      imprinted with the kept samples' class-mean features (`imprint`), and 40 warm-up steps.

Every row is cached as JSON under --results (committed, so the table builds up across sessions) keyed by its
setting, row and seed; model folders live under --work. `--plan` picks which (setting, row, seed) to compute, in
order; `--table` prints the Markdown tables from whatever is cached; `--summary` one line per setting.

Design v3 (`--design v3`, the default; v2's rows stay readable with `--design v2`):
* Each seed draws its own data: `data.data_seed = seed` sets the long-tailed subset, the noise draw and the splits.
* A selection split (`fashion-mnist:select`, 300 clean images a class, held out of train and of val) is where every
  method choice is read: cleanlab's `filter_by` (all seven of its methods), and whether a method change is adopted.
  The val split (100 a class) only picks checkpoints and stops early. Test is read for the claim, never to choose.
* Every row stores its final model's per-image predictions on the selection split and on test
  (`<row>-s<seed>.preds.npz`, and each recipe stage's too), so paired differences and a paired bootstrap can be
  computed from the committed files.
* cleanlab's second round is out of fold: fold f's model is round 1's fold-f model (which never saw fold f)
  fine-tuned like the recipe's round 1 on the kept samples of the other folds, then scores fold f.
* The confusion targets (each class's look-alike) are v2's, measured from a clean model's val confusion.

Decision rules, written before the v3 rows ran:
* Claim (test, mean top-1 error, lower is better): for each seed, d = recipe - cleanlab. The recipe is ahead when
  mean(d) <= -0.01 with d < 0 on at least 4 of 5 seeds (class-dependent noise), and not behind when mean(d) <= 0
  (symmetric noise); gap closed = (baseline - recipe) / (baseline - matched oracle), per seed, then averaged.
* Adoption of a method change (selection split only, never test): paired by seed against the default recipe, it
  is adopted when the mean difference is below 0 and the paired bootstrap (over selection images, within seeds)
  puts its 95% upper bound below 0, in the class-dependent setting, and on clean data it costs at most +0.003.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lossguided import config as config_mod
from lossguided import stages
from lossguided.config import RecipeConfig
from lossguided.data import fashion_mnist
from lossguided.data.sources import make_dataset
from lossguided.data.transforms import BatchTransform
from lossguided.engine import checkpoint
from lossguided.io import atomic_path, write_json
from lossguided.losstable import LossTable
from lossguided.metrics import auroc
from lossguided.models import create_model
from lossguided.recipe import run_recipe

log = logging.getLogger("bench")

SETTINGS = {
    "sym20": {"data.noise_rate": 0.2, "data.noise_kind": "symmetric"},
    "confusion30": {"data.noise_rate": 0.3, "data.noise_kind": "confusion"},
    "clean": {"data.noise_rate": 0.0},
    "sym20-noisyval": {"data.noise_rate": 0.2, "data.noise_kind": "symmetric", "data.noisy_val": True},
}
TITLES = {
    "sym20": "20% symmetric noise",
    "confusion30": "30% class-dependent noise (each class toward its most-confused class)",
    "clean": "no noise",
    "sym20-noisyval": "20% symmetric noise, noisy val split",
}
PAPER_DROP = 9.0 * math.log(10) / math.log(50_030)
CLEANLAB_FILTERS_V2 = ("prune_by_noise_rate", "both", "confident_learning")
CLEANLAB_FILTERS = (  # every filter_by of cleanlab.filter.find_label_issues
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
SELECT_PER_CLASS = 300  # v3's selection split
CHOOSE = "fashion-mnist:select"  # where a recipe's 'auto' choices are read in v3 (data.choose)
WARMUP = 40  # steps of linear warm-up when a fine-tune re-initialises its head (half an epoch of the clean list)
FOLDS = 5
CAP = 1000  # the recipe's per-class cap (band 1-1000)


@dataclasses.dataclass
class Bench:
    recipe: str
    work: Path
    results: Path
    design: str = "v3"

    # -- configs and cache -------------------------------------------------------------------------------------
    def cfg(self, setting: str, seed: int, **extra) -> RecipeConfig:
        over = dict(SETTINGS[setting]) | {"pretrain.seed": seed, "finetune.seed": seed}
        over["refine.logit_adjust"] = None  # rows name their own selection and adjustment (the default has both)
        if self.design == "v3":  # each seed its own data draw, and a selection split held out of train and val
            over |= {"data.data_seed": seed, "data.select_per_class": SELECT_PER_CLASS}
        over |= extra
        if over.get("data.noise_kind") == "confusion":
            over["data.noise_target"] = self.confusion_target()
        return config_mod.load(self.recipe, [f"{k}={json.dumps(v)}" for k, v in over.items()])

    def cached(self, setting: str, row: str, seed: int, fn: Callable[[], dict]) -> dict:
        path = self.results / setting / f"{row}-s{seed}.json"
        if path.is_file():
            return json.loads(path.read_text())
        log.info("computing %s / %s / seed %d", setting, row, seed)
        start = time.perf_counter()
        result = {"setting": setting, "row": row, "seed": seed, **fn()}
        checkpoints = result.pop("_predict", None)
        counts = result.pop("_train_counts", None)
        if self.design == "v3" and checkpoints:
            result |= self.store_predictions(setting, seed, checkpoints, path.with_suffix(".preds.npz"), counts)
        result["wall_s"] = round(time.perf_counter() - start, 1)
        write_json(path, result)
        log.info("done %s / %s / seed %d: %s", setting, row, seed, _brief(result))
        return result

    def dir(self, setting: str, name: str, seed: int) -> Path:
        return self.work / setting / f"{name}-s{seed}"

    def selection_split(self, setting: str, seed: int):
        return fashion_mnist.load("select", fashion_mnist.options_from(self.cfg(setting, seed).data))

    def store_predictions(
        self, setting: str, seed: int, checkpoints: dict[str, Path], path: Path, train_counts: list | None = None
    ) -> dict:
        """Per-image top-1 of each named checkpoint on the selection split and test, written beside the row (the
        last name is the row's final model, whose log-probabilities are kept too, float16, with the class counts of
        its training list: enough to measure a post-hoc class-prior correction); returns the final model's
        selection-split error."""
        cfg = self.cfg(setting, seed)
        sel = self.selection_split(setting, seed)
        test = fashion_mnist.load("test", fashion_mnist.options_from(cfg.data))
        arrays: dict[str, np.ndarray] = {"select_ids": sel.ids, "select_labels": sel.labels, "test_labels": test.labels}
        final = list(checkpoints)[-1]
        for name, ckpt in checkpoints.items():
            for split, m in (("select", sel), ("test", test)):
                probs = predict_probs(ckpt, m, cfg)
                arrays[f"{split}_pred_{name}"] = probs.argmax(1).astype(np.int8)
                if name == final:
                    arrays[f"{split}_logp"] = np.log(np.maximum(probs, 1e-30)).astype(np.float16)
        if train_counts is not None:
            arrays["train_counts"] = np.asarray(train_counts, dtype=np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays, stages=np.array(list(checkpoints)))
        return {"select_mean_top1_error": mean_error(sel.labels, arrays[f"select_pred_{final}"])}

    # -- the confusion of a clean model ------------------------------------------------------------------------
    def confusion_target(self) -> list[int]:
        """Each class's most-confused other class, from the clean recipe's pre-trained model (seed 0) on val."""
        path = self.results / "confusion_target.json"
        if path.is_file():
            return json.loads(path.read_text())["target"]
        cfg = self.cfg("clean", 0)
        splits = stages.load_splits(cfg.data)
        probs = predict_probs(self.pretrained("clean", 0), splits.val, cfg)
        k = len(splits.classes)
        conf = np.zeros((k, k), dtype=np.int64)
        np.add.at(conf, (splits.val.true_labels, probs.argmax(1)), 1)
        off = conf.copy()
        np.fill_diagonal(off, -1)
        target = off.argmax(1).tolist()
        write_json(
            path,
            {
                "target": target,
                "confusion": conf.tolist(),
                "classes": list(splits.classes.names),
                "how": "argmax off-diagonal of the clean pre-trained model's val confusion",
            },
        )
        return target

    # -- rows ------------------------------------------------------------------------------------------------
    def recipe_row(self, setting: str, seed: int, variant: str) -> dict:
        """variant: auto | fixed (1.5) | paper | ensemble | rounds3 | disagree | oof | lr0 | heldout | confident |
        hybrid | reset | imprint.
        Non-auto variants reuse the auto run's pre-training (and what else they share with it or with oof)."""
        over = {
            "auto": {"refine.drop_loss_above": "auto"},
            "fixed": {"refine.drop_loss_above": 1.5},
            "paper": {"refine.drop_loss_above": PAPER_DROP, "refine.bands": ["1-5", "6-10", "11-15"]},
            "ensemble": {"refine.drop_loss_above": "auto", "ensemble.seeds": [101, 102]},
            "rounds3": {"refine.drop_loss_above": "auto", "refine.rounds": 3},
            "disagree": {"refine.drop_loss_above": "auto", "refine.drop_disagreeing": True},
            "oof": {"refine.drop_loss_above": "auto", "record.folds": 2},
            "lr0": {"refine.drop_loss_above": "auto", "record.later_rounds_lr": 0.0},
            "heldout": {"refine.drop_loss_above": "auto", "record.folds": 2, "record.later_rounds_lr": 0.0},
            "confident": {"refine.drop_loss_above": None, "refine.drop_confident_other": True},
            "hybrid": {"refine.drop_loss_above": "hybrid"},
            "reset": {"refine.drop_loss_above": "auto", "finetune.head": "reset", "finetune.warmup_steps": WARMUP},
            "imprint": {"refine.drop_loss_above": "auto", "finetune.head": "imprint", "finetune.warmup_steps": WARMUP},
            "la": {"refine.drop_loss_above": "auto", "refine.logit_adjust": "auto", "data.choose": CHOOSE},
            "hybrid_la": {"refine.drop_loss_above": "hybrid", "refine.logit_adjust": "auto", "data.choose": CHOOSE},
            "relabel": {"refine.drop_loss_above": "auto", "refine.relabel_confident": True},
            "heldout_la": {
                "refine.drop_loss_above": "auto",
                "record.folds": 2,
                "record.later_rounds_lr": 0.0,
                "refine.logit_adjust": "auto",
                "data.choose": CHOOSE,
            },
            "relabel_la": {
                "refine.drop_loss_above": "auto",
                "refine.relabel_confident": True,
                "refine.logit_adjust": "auto",
                "data.choose": CHOOSE,
            },
        }[variant]

        def run() -> dict:
            cfg = self.cfg(setting, seed, **over)
            out = self.dir(setting, f"recipe_{variant}", seed)
            if variant != "auto":
                self.recipe_row(setting, seed, "auto")
                self.pretrained(setting, seed)
                _share_stage(self.dir(setting, "recipe_auto", seed), out, "pretrain")
                if variant in ("ensemble", "rounds3", "la", "hybrid_la", "relabel_la", "heldout_la"):  # +1 step
                    first = {"hybrid_la": "hybrid", "relabel_la": "relabel", "heldout_la": "heldout"}.get(
                        variant, "auto"
                    )
                    if first != "auto":
                        self.recipe_row(setting, seed, first)
                    for stage in ("record1", "refine1", "record2", "refine2"):
                        _share_stage(self.dir(setting, f"recipe_{first}", seed), out, stage)
                if variant in ("disagree", "confident", "hybrid", "reset", "imprint", "relabel"):  # same record1
                    _share_stage(self.dir(setting, "recipe_auto", seed), out, "record1")
                if variant in ("lr0", "heldout"):  # the same first round as auto / oof, another second recording
                    first = "auto" if variant == "lr0" else "oof"
                    if first != "auto":
                        self.recipe_row(setting, seed, first)
                    for stage in ("record1", "refine1"):
                        _share_stage(self.dir(setting, f"recipe_{first}", seed), out, stage)
            metrics = run_recipe(cfg, out_dir=out)
            splits = stages.load_splits(cfg.data)
            final = metrics["stages"][-1]
            row = _errors(final) | {
                "train_samples": final.get("train_samples"),
                "images_seen": _recipe_images_seen(out, len(splits.train), metrics["stages"]),
                "stages": [
                    _errors(s) | {"name": s["name"], "train_samples": s.get("train_samples")} for s in metrics["stages"]
                ],
            }
            last_refine = [s for s in metrics["stages"] if s["name"].startswith("refine")][-1]
            for key in ("purity", "loss_auroc", "estimated_noise_rate", "train_noise_rate", "classes_covered"):
                if key in last_refine:
                    row[key] = last_refine[key]
            row["min_class_selected"] = _min_class_selected(out, last_refine["name"], splits)
            row["_predict"] = {s["name"]: out / s["checkpoint"] for s in metrics["stages"] if s.get("checkpoint")}
            row["_train_counts"] = _selected_counts(out, last_refine["name"], splits)
            return row

        return self.cached(setting, f"recipe_{variant}", seed, run)

    def pretrained(self, setting: str, seed: int) -> Path:
        """The noisy pre-trained checkpoint of the auto recipe (its cached row may outlive the model folder: the
        pre-training is then run again, which is deterministic on CPU)."""
        out = self.dir(setting, "recipe_auto", seed)
        if not (out / "pretrain" / "done.json").is_file():
            cfg = self.cfg(setting, seed, **{"refine.drop_loss_above": "auto", "refine.rounds": 0})
            run_recipe(cfg, out_dir=out / "_pretrain_only")
            _share_stage(out / "_pretrain_only", out, "pretrain")
        return out / "pretrain" / "best.pt"

    def oracle_plain_row(self, setting: str, seed: int) -> dict:
        def run() -> dict:
            clean = self.recipe_row("clean", seed, "auto")
            pre = clean["stages"][0]
            return _errors(pre) | {
                "train_samples": pre["train_samples"],
                "purity": 1.0,
                "images_seen": pre["train_samples"] * self.cfg(setting, seed).pretrain.epochs,
            }

        return self.cached(setting, "oracle_plain", seed, run)

    def matched_oracle_row(self, setting: str, seed: int) -> dict:
        def run() -> dict:
            clean = self.recipe_row("clean", seed, "auto")
            keys = ("val_mean_top1_error", "test_mean_top1_error", "select_mean_top1_error", "train_samples")
            return {k: clean.get(k) for k in (*keys, "images_seen")} | {"purity": 1.0}

        return self.cached(setting, "matched_oracle", seed, run)

    def baseline_row(self, setting: str, seed: int) -> dict:
        def run() -> dict:
            recipe = self.recipe_row(setting, seed, "auto")
            cfg = self.cfg(setting, seed)
            splits = stages.load_splits(cfg.data)
            n = len(splits.train)
            epochs = max(cfg.pretrain.epochs, round(recipe["images_seen"] / n))
            longer = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, epochs=epochs))
            out = self.dir(setting, "baseline", seed)
            stages.train(longer, stages.Splits(splits.train, splits.val, None), out_dir=out)
            noisy = splits.train.labels != splits.train.true_labels
            return _evaluate(out / "best.pt", splits, cfg) | {
                "train_samples": n,
                "purity": float(1 - noisy.mean()),
                "epochs": epochs,
                "images_seen": n * _epochs_run(out),
                "_predict": {"baseline": out / "best.pt"},
                "_train_counts": np.bincount(splits.train.labels, minlength=len(splits.classes)).tolist(),
            }

        return self.cached(setting, "baseline", seed, run)

    def cleanlab_row(self, setting: str, seed: int) -> dict:
        def run() -> dict:
            from cleanlab.filter import find_label_issues

            self.recipe_row(setting, seed, "auto")
            cfg = self.cfg(setting, seed)
            splits = stages.load_splits(cfg.data)
            train = splits.train
            work = self.dir(setting, "cleanlab", seed)
            pre = self.pretrained(setting, seed)
            seen = 0
            probs, s = self.oof_probs(cfg, train, splits.val, work / "oof1", init_from=None, section="pretrain")
            seen += s
            filter_by = self.cleanlab_filter(setting, cfg, splits, probs, pre)
            start, rounds, keep = pre, [], None
            for r in (1, 2):
                if r == 2 and self.design == "v3":  # truly out of fold: round 1's fold models, fine-tuned on kept
                    probs, s = self.oof_probs(
                        cfg, train, splits.val, work / "oof2", init_from=work / "oof1", section="finetune", keep=keep
                    )
                    seen += s
                elif r == 2:
                    probs, s = self.oof_probs(cfg, train, splits.val, work / "oof2", init_from=start, section="record")
                    seen += s
                issues = find_label_issues(train.labels, probs, filter_by=filter_by)
                keep = _cap_per_class(train.labels, probs, ~issues, CAP)
                out = work / f"refine{r}"
                sub = stages.Splits(train.subset(keep), splits.val, None)
                stages.train(cfg, sub, out_dir=out, section="finetune", init_from=start)
                seen += len(keep) * _epochs_run(out)
                noisy = train.labels != train.true_labels
                rounds.append(
                    {
                        "train_samples": int(len(keep)),
                        "purity": float(1 - noisy[keep].mean()),
                        "flagged": int(issues.sum()),
                        "loss_auroc": auroc(1 - probs[np.arange(len(train)), train.labels], noisy)
                        if noisy.any()
                        else None,
                    }
                )
                start = out / "best.pt"
            row = (
                _evaluate(start, splits, cfg)
                | rounds[-1]
                | {"filter_by": filter_by, "rounds": rounds, "images_seen": seen}
            )
            row["min_class_selected"] = int(np.bincount(train.labels[keep], minlength=len(train.classes)).min())
            row["_predict"] = {f"refine{r}": work / f"refine{r}" / "best.pt" for r in (1, 2)}
            row["_train_counts"] = np.bincount(train.labels[keep], minlength=len(train.classes)).tolist()
            return row

        return self.cached(setting, "cleanlab", seed, run)

    def diag_matched_row(self, setting: str, seed: int) -> dict:
        """A diagnosis, not a method row (it reads the injected true labels): the perfectly clean list (the truly
        clean samples, each class capped at its 1,000 lowest recorded losses) fine-tuned from the noisy pre-trained
        model and from random weights with the same epochs and lr (the pre-training's lr, 12 epochs, no early stop),
        so that the start is the only difference."""

        def run() -> dict:
            self.recipe_row(setting, seed, "auto")
            cfg = self.cfg(setting, seed)
            splits = stages.load_splits(cfg.data)
            run_dir = self.dir(setting, "recipe_auto", seed)
            table = LossTable.load(run_dir / "record1" / "losses.npz")
            clean = np.flatnonzero(table.labels == table.true_labels)
            order = clean[np.lexsort((table.losses[clean], table.labels[clean]))]
            lab = table.labels[order]
            perfect = np.sort(table.ids[order[np.arange(len(order)) - np.searchsorted(lab, lab) < CAP]])
            same = dataclasses.replace(
                cfg, finetune=dataclasses.replace(cfg.finetune, epochs=12, lr=cfg.pretrain.lr, patience=None)
            )
            sub = stages.Splits(splits.train.select_ids(perfect), splits.val, None)
            out, checkpoints = {"train_samples": int(len(perfect))}, {}
            for name, start in (("noisy_start", run_dir / "pretrain" / "best.pt"), ("scratch", None)):
                folder = self.dir(setting, f"diag_matched_{name}", seed)
                stages.train(same, sub, out_dir=folder, section="finetune", init_from=start)
                out[name] = _evaluate(folder / "best.pt", splits, cfg)
                checkpoints[name] = folder / "best.pt"
            return out | {"_predict": checkpoints}

        return self.cached(setting, "diag_matched", seed, run)

    def cleanlab_la_row(self, setting: str, seed: int) -> dict:
        """cleanlab's row with the recipe's post-hoc logit adjustment (engine/prior.py): the prior from its final
        training list, tau chosen on the selection split, as `refine.logit_adjust: auto` with data.choose."""

        def run() -> dict:
            from lossguided.data.transforms import saved_normalization
            from lossguided.engine.prior import choose_tau, fold_into_head, log_prior, predictions_by_tau
            from lossguided.models import load_model

            base = self.cleanlab_row(setting, seed)
            counts = _preds(self.results, setting, "cleanlab", seed)["train_counts"]
            cfg = self.cfg(setting, seed)
            final = self.dir(setting, "cleanlab", seed) / "refine2" / "best.pt"
            state = checkpoint.load(final)
            model, _ = load_model(state)
            prior = log_prior(counts)
            sel = self.selection_split(setting, seed)
            y, preds = predictions_by_tau(
                model,
                make_dataset(sel, image_size=cfg.data.image_size),
                prior,
                normalization=saved_normalization(state),
            )
            tau, errors = choose_tau(y, preds, len(sel.classes))
            fold_into_head(model, tau, prior)
            out = self.dir(setting, "cleanlab_la", seed)
            out.mkdir(parents=True, exist_ok=True)
            checkpoint.save(out / "best.pt", state | {"model": model.state_dict()})
            splits = stages.load_splits(cfg.data)
            keys = ("train_samples", "purity", "images_seen", "min_class_selected", "filter_by")
            return (
                _evaluate(out / "best.pt", splits, cfg)
                | {k: base.get(k) for k in keys}
                | {"tau": tau, "select_error_by_tau": {str(t): e for t, e in errors.items()}}
                | {"_predict": {"adjusted": out / "best.pt"}, "_train_counts": counts.tolist()}
            )

        return self.cached(setting, "cleanlab_la", seed, run)

    def cleanlab_filter(self, setting: str, cfg: RecipeConfig, splits, probs: np.ndarray, pre: Path) -> str:
        """cleanlab's `filter_by`, chosen once per setting (the first seed that gets here) by the round-1 model's
        error on the selection split (v3, all seven methods) or on val (v2, three)."""
        path = self.results / setting / "cleanlab_filter_by.json"
        if path.is_file():
            return json.loads(path.read_text())["filter_by"]
        from cleanlab.filter import find_label_issues

        v3 = self.design == "v3"
        judge = self.selection_split(setting, cfg.pretrain.seed) if v3 else splits.val
        train, val_err = splits.train, {}
        for fb in CLEANLAB_FILTERS if v3 else CLEANLAB_FILTERS_V2:
            keep = _cap_per_class(train.labels, probs, ~find_label_issues(train.labels, probs, filter_by=fb), CAP)
            out = self.work / setting / f"cleanlab_choose_{fb}"
            stages.train(
                cfg, stages.Splits(train.subset(keep), splits.val, None), out_dir=out, section="finetune", init_from=pre
            )
            val_err[fb] = stages.evaluate_checkpoint(out / "best.pt", judge)["mean_top1_error"]
            log.info(
                "cleanlab filter_by %s: %s mean top-1 error %.4f (%d kept)", fb, judge.source, val_err[fb], len(keep)
            )
        best = min(val_err, key=val_err.get)
        key = "select_mean_top1_error" if v3 else "val_mean_top1_error"
        write_json(path, {"filter_by": best, key: val_err, "chosen_with_seed": cfg.pretrain.seed})
        return best

    def oof_probs(
        self,
        cfg: RecipeConfig,
        train,
        val,
        work: Path,
        *,
        init_from: Path | None,
        section: str,
        keep: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """Out-of-fold softmax [N, K] from 5 stratified folds: each fold's model trains on the other four (from
        scratch at the pre-training settings, or one recording-style epoch from `init_from`). With section
        "finetune", `init_from` is a folder of fold models (`fold<f>/best.pt`, trained without fold f) and each is
        fine-tuned on the `keep` indices outside its fold, so no model has seen the samples it scores."""
        from sklearn.model_selection import StratifiedKFold

        path = work / "probs.npy"
        if path.is_file() and (work / "seen.json").is_file():
            return np.load(path), json.loads((work / "seen.json").read_text())["seen"]
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=cfg.pretrain.seed)
        if section == "record":  # the recipe's recording pass: one epoch at the pre-training lr, no flips/smoothing
            tcfg = dataclasses.replace(cfg.pretrain, epochs=cfg.record.epochs, flip=False, smoothing=0.0)
            cfg = dataclasses.replace(cfg, pretrain=tcfg)
        probs = np.zeros((len(train), len(train.classes)), dtype=np.float32)
        seen = 0
        for f, (fit, held) in enumerate(folds.split(np.zeros(len(train)), train.labels)):
            out = work / f"fold{f}"
            if section == "finetune":
                fit = np.intersect1d(fit, keep)
                start = init_from / f"fold{f}" / "best.pt"
                stages.train(
                    cfg, stages.Splits(train.subset(fit), val, None), out_dir=out, section="finetune", init_from=start
                )
            else:
                stages.train(cfg, stages.Splits(train.subset(fit), val, None), out_dir=out, init_from=init_from)
            probs[held] = predict_probs(out / "best.pt", train.subset(held), cfg)
            seen += len(fit) * _epochs_run(out)
        np.save(path, probs)
        write_json(work / "seen.json", {"seen": seen})
        return probs, seen


# -- helpers -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_probs(ckpt: Path, manifest, cfg: RecipeConfig) -> np.ndarray:
    """Softmax probabilities [N, K] in manifest order."""
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


def mean_error(labels: np.ndarray, preds: np.ndarray) -> float:
    """AliProducts' mean top-1 error: each class's error, averaged over the classes present."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k)
    wrong = np.bincount(labels, weights=labels != preds, minlength=k)
    return float((wrong[counts > 0] / counts[counts > 0]).mean())


def _cap_per_class(labels: np.ndarray, probs: np.ndarray, keep: np.ndarray, cap: int) -> np.ndarray:
    """Indices of kept samples, at most `cap` per class: the most confident in their given label."""
    idx = np.flatnonzero(keep)
    conf = probs[idx, labels[idx]]
    order = idx[np.lexsort((-conf, labels[idx]))]
    lab = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(lab, lab)
    return np.sort(order[rank < cap])


def _share_stage(src: Path, dst: Path, stage: str) -> None:
    """Reuse a finished stage of another run folder (hard links: no copy, no second training)."""
    if (dst / stage / "done.json").is_file() or not (src / stage / "done.json").is_file():
        return
    shutil.copytree(src / stage, dst / stage, copy_function=lambda a, b: Path(b).hardlink_to(a), dirs_exist_ok=True)


def _errors(d: dict) -> dict:
    return {k: d.get(k) for k in ("val_mean_top1_error", "test_mean_top1_error")}


def _evaluate(ckpt: Path, splits: stages.Splits, cfg: RecipeConfig) -> dict:
    out = {}
    for name, m in (("val", splits.val), ("test", splits.test)):
        out[f"{name}_mean_top1_error"] = stages.evaluate_checkpoint(ckpt, m, image_size=cfg.data.image_size)[
            "mean_top1_error"
        ]
    return out


def _epochs_run(run_dir: Path) -> int:
    return len((run_dir / "metrics.jsonl").read_text().splitlines())


def _recipe_images_seen(out: Path, n: int, stage_rows: list[dict]) -> int:
    seen = 0
    for s in stage_rows:
        name = s["name"]
        if name == "pretrain":
            seen += n * _epochs_run(out / "pretrain")
            continue
        if name.startswith("refine"):
            r = name.removeprefix("refine")
            cross_fit = out / f"record{r}" / "cross_fit.json"
            if cross_fit.is_file():  # out-of-fold recording: each fold model's pre-training (scoring is eval only)
                sizes = json.loads(cross_fit.read_text())["fit_sizes"]
                seen += sum(
                    size * _epochs_run(out / f"record{r}" / f"fold{f}" / "model") for f, size in enumerate(sizes)
                )
            elif json.loads((out / f"record{r}" / "done.json").read_text()).get("trained", True):
                seen += n * _epochs_run(out / f"record{r}")  # lr 0: an eval pass, not training
            seen += s["train_samples"] * _epochs_run(out / name)
        elif name.startswith("ensemble"):
            for seed_dir in sorted((out / "ensemble").glob("seed*")):
                seen += s["train_samples"] * _epochs_run(seed_dir)
    return seen


def _selected_counts(out: Path, stage: str, splits: stages.Splits) -> list[int] | None:
    path = out / stage / "selected.csv"
    if not path.is_file():
        return None
    names = [line.rsplit(",", 1)[-1] for line in path.read_text().splitlines()[1:]]  # relabelled rows as written
    labels = splits.train.classes.index_of(names)
    return np.bincount(labels[labels >= 0], minlength=len(splits.classes)).tolist()


def _min_class_selected(out: Path, stage: str, splits: stages.Splits) -> int | None:
    counts = _selected_counts(out, stage, splits)
    return None if counts is None else int(min(counts))


def _brief(r: dict) -> str:
    return f"val {r.get('val_mean_top1_error')} test {r.get('test_mean_top1_error')} ({r.get('wall_s')} s)"


# -- tables ------------------------------------------------------------------------------------------------------
OWN_CEILING = (
    "rounds3",
    "oof",
    "lr0",
    "heldout",
    "la",
    "hybrid",
    "hybrid_la",
)  # variants measured against themselves on the true labels (when that row exists)
ROW_ORDER = [
    ("pretrain", "stage 1 alone (given labels, 6 epochs)"),
    ("baseline", "baseline (given labels, the recipe's budget)"),
    ("oracle_plain", "oracle, plain (stage 1 on the true labels)"),
    ("matched_oracle", "matched oracle (the recipe on the true labels)"),
    ("matched_oracle_rounds3", "matched oracle, 3 rounds (the ceiling of the third-round row)"),
    ("matched_oracle_oof", "matched oracle, out of fold (the ceiling of the out-of-fold row)"),
    ("matched_oracle_lr0", "matched oracle, second recording without updates"),
    ("matched_oracle_heldout", "matched oracle, out of fold + second without updates"),
    ("matched_oracle_hybrid", "matched oracle, hybrid rule (the ceiling of the hybrid row)"),
    ("matched_oracle_hybrid_la", "matched oracle, the default (hybrid + logit adjustment) on the true labels"),
    ("matched_oracle_la", "matched oracle + logit adjustment (the ceiling of the logit-adjusted rows)"),
    ("cleanlab", "cleanlab, strongest fair setting"),
    ("recipe_paper", "paper's rule (bands 1-5/6-10/11-15, drop 1.915)"),
    ("recipe_fixed", "recipe, fixed 1.5 nats"),
    ("recipe_auto", "recipe, auto threshold"),
    ("recipe_rounds3", "recipe auto, a third round"),
    ("recipe_oof", "recipe auto, out-of-fold first recording (2 folds)"),
    ("recipe_lr0", "recipe auto, second recording without updates"),
    ("recipe_heldout", "recipe auto, out-of-fold first recording + second without updates"),
    ("recipe_confident", "recipe, dropping what is confidently another class (no loss threshold)"),
    ("recipe_disagree", "recipe auto, also dropping where the model disagrees"),
    ("recipe_reset", "recipe auto, fine-tune with a new classifier and a warm-up"),
    ("recipe_imprint", "recipe auto, fine-tune with the classifier imprinted from the kept samples, warm-up"),
    ("cleanlab_la", "cleanlab + logit adjustment (tau on the selection split)"),
    ("recipe_la", "recipe auto + logit adjustment (tau on the selection split)"),
    ("recipe_hybrid_la", "recipe hybrid + logit adjustment"),
    ("recipe_heldout_la", "recipe auto, out-of-fold first recording + second without updates + logit adjustment"),
    ("recipe_relabel", "recipe auto + the dropped look-alikes relabelled to the class they show"),
    ("recipe_relabel_la", "recipe auto + relabelled look-alikes + logit adjustment"),
    ("recipe_hybrid", "recipe, hybrid rule (own mixture where two modes, else confidently another class)"),
    ("recipe_ensemble", "recipe auto + 3-model ensemble"),
]


def _ms(values: list[float], digits: int = 4) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f} (1 seed)"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _minutes(values: list) -> str:
    v = [x for x in values if x is not None]
    return f"{np.mean(v) / 60:.1f}" if v else "-"


def load_rows(results: Path, setting: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted((results / setting).glob("*-s*.json")):
        r = json.loads(path.read_text())
        out.setdefault(r["row"], []).append(r)
    for variant in OWN_CEILING:  # the variant's recipe on the true labels: its ceiling
        if setting == "clean" or f"recipe_{variant}" not in out:
            continue
        for path in sorted((results / "clean").glob(f"recipe_{variant}-s*.json")):
            r = json.loads(path.read_text())
            row = f"matched_oracle_{variant}"
            out.setdefault(row, []).append(r | {"row": row, "wall_s": None})
    for r in out.get("recipe_auto", []):  # the recipe's own stage 1, before any refinement
        pre = r["stages"][0]
        n = pre.get("train_samples")
        out.setdefault("pretrain", []).append(
            _errors(pre) | {"seed": r["seed"], "train_samples": n, "images_seen": n * 6 if n else None, "wall_s": None}
        )
    return out


def _gaps(rs: list[dict], base: dict, ceil: dict) -> list[float]:
    """Share of the baseline -> matched-oracle test gap a row closes, per seed where both are known."""
    return [
        (base[r["seed"]] - r["test_mean_top1_error"]) / (base[r["seed"]] - ceil[r["seed"]])
        for r in rs
        if r["seed"] in base and r["seed"] in ceil and base[r["seed"]] - ceil[r["seed"]] > 1e-9
    ]


def _pct(gaps: list[float]) -> str:
    return "-" if not gaps else _ms([100 * g for g in gaps], 0).replace(" (1 seed)", "") + "%"


def to_markdown(results: Path, setting: str) -> str:
    """One table per setting. Gap closed: against the baseline at the recipe's budget (the issue's definition)
    and against the better noisy baseline by val error (6 or 11 epochs: longer training can memorise noise)."""
    rows = load_rows(results, setting)
    if not rows:
        return ""
    test = {k: {r["seed"]: r for r in rows.get(k, [])} for k in ("baseline", "pretrain", "matched_oracle")}
    budget = {s: r["test_mean_top1_error"] for s, r in test["baseline"].items()}
    best = {}
    for s, r in test["baseline"].items():
        pre = test["pretrain"].get(s)
        better = pre if pre is not None and pre["val_mean_top1_error"] < r["val_mean_top1_error"] else r
        best[s] = better["test_mean_top1_error"]
    ceil = {s: r["test_mean_top1_error"] for s, r in test["matched_oracle"].items()}
    own = {v: {r["seed"]: r["test_mean_top1_error"] for r in rows.get(f"matched_oracle_{v}", [])} for v in OWN_CEILING}
    lines = [
        f"**{TITLES[setting]}**",
        "",
        "| row | seeds | test mean top-1 err | selection-split err | val mean top-1 err | gap closed (budget baseline) "
        "| gap closed (better baseline by val) | train samples | purity | smallest class kept | est. noise "
        "| images seen | wall min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, title in ROW_ORDER:
        rs = sorted(rows.get(key, []), key=lambda r: r["seed"])
        if not rs:
            continue
        noisy = setting != "clean"
        variant = key.removeprefix("recipe_").removeprefix("matched_oracle_")
        if variant.endswith("_la") and variant not in OWN_CEILING:  # adjusted rows: against the adjusted ceiling
            variant = "la"
        # each against its own ceiling where that has every seed of the row, else the recipe's matched oracle
        covered = variant in OWN_CEILING and all(r["seed"] in own[variant] for r in rs)
        top = own[variant] if covered else ceil
        g1 = _pct(_gaps(rs, budget, top)) if noisy else "-"
        g2 = _pct(_gaps(rs, best, top)) if noisy else "-"
        get = lambda k, rs=rs: [r.get(k) for r in rs]  # noqa: E731
        seen = np.mean([r["images_seen"] for r in rs if r.get("images_seen")] or [np.nan])
        shared = ("pretrain", "matched_oracle", "oracle_plain", *(f"matched_oracle_{v}" for v in OWN_CEILING))
        wall = "shared" if key in shared else _minutes(get("wall_s"))
        lines.append(
            f"| {title} | {len(rs)} | {_ms(get('test_mean_top1_error'))} | {_ms(get('select_mean_top1_error'))} "
            f"| {_ms(get('val_mean_top1_error'))} "
            f"| {g1} | {g2} | {_ms(get('train_samples'), 0)} | {_ms(get('purity'), 3)} "
            f"| {_ms(get('min_class_selected'), 0)} | {_ms(get('estimated_noise_rate'), 3)} "
            f"| {'-' if np.isnan(seen) else f'{seen:,.0f}'} | {wall} |".replace(" (1 seed)", "")
        )
    return "\n".join(lines)


_DEFAULT = config_mod.load("cpu-small").refine
DEFAULT_ROW = f"recipe_{_DEFAULT.drop_loss_above}{'_la' if _DEFAULT.logit_adjust else ''}"  # the shipped default's row
TAUS = np.round(np.arange(0.0, 2.01, 0.25), 2)  # post-hoc logit adjustment strengths tried on the selection split


def _preds(results: Path, setting: str, row: str, seed: int) -> dict | None:
    path = results / setting / f"{row}-s{seed}.preds.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _final_pred(p: dict, split: str) -> np.ndarray:
    return p[f"{split}_pred_{p['stages'][-1]}"]


def paired_bootstrap(labels: np.ndarray, wrong_a: np.ndarray, wrong_b: np.ndarray, *, draws: int = 2000, seed: int = 0):
    """Mean per-class error of a minus b, and a 95% interval from resampling the images within each class."""
    k = int(labels.max()) + 1
    diff = wrong_a.astype(float) - wrong_b.astype(float)
    point = float(np.mean([diff[labels == c].mean() for c in range(k)]))
    (boots,) = _bootstrap_draws(labels, wrong_a, wrong_b, draws=draws, seed=seed)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return point, float(lo), float(hi)


def paired_lines(results: Path, setting: str, a: str, b: str, *, draws: int = 2000) -> list[str]:
    """Per seed: a - b on the selection split and on test (mean per-class error), with paired bootstrap intervals;
    with two seeds or more, the mean over seeds with an interval that resamples each seed's images apart."""
    lines, pooled = [], {"select": [], "test": []}
    for seed in range(10):
        pa, pb = _preds(results, setting, a, seed), _preds(results, setting, b, seed)
        if pa is None or pb is None:
            continue
        parts = []
        for split in ("select", "test"):
            labels = pa[f"{split}_labels"]
            wa, wb = _final_pred(pa, split) != labels, _final_pred(pb, split) != labels
            d, lo, hi = paired_bootstrap(labels, wa, wb, seed=seed)
            pooled[split].append(_bootstrap_draws(labels, wa, wb, draws=draws, seed=seed) + (d,))
            parts.append(f"{split} {d:+.5f} [{lo:+.5f}, {hi:+.5f}]")
        lines.append(f"{setting} seed {seed}: {a} - {b}: " + "; ".join(parts))
    if len(pooled["select"]) >= 2:
        parts = []
        for split, per_seed in pooled.items():
            mean = float(np.mean([d for *_, d in per_seed]))
            boots = np.mean([b for b, _ in per_seed], axis=0)
            lo, hi = np.quantile(boots, [0.025, 0.975])
            signs = sum(d < 0 for *_, d in per_seed)
            parts.append(f"{split} {mean:+.5f} [{lo:+.5f}, {hi:+.5f}] ({signs} of {len(per_seed)} seeds below 0)")
        lines.append(f"{setting} {len(pooled['select'])} seeds: {a} - {b}: " + "; ".join(parts))
    return lines


def _bootstrap_draws(labels, wrong_a, wrong_b, *, draws: int, seed: int) -> tuple[np.ndarray]:
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    diff = wrong_a.astype(float) - wrong_b.astype(float)
    return (np.array([np.mean([diff[rng.choice(i, len(i))].mean() for i in by_class]) for _ in range(draws)]),)


def logit_adjusted(p: dict) -> dict | None:
    """Post-hoc logit adjustment of the final model: argmax(log p - tau log prior), prior = the class counts of its
    training list, tau chosen on the selection split (ties to the smaller tau); errors before and after."""
    if "select_logp" not in p or "train_counts" not in p:
        return None
    log_prior = np.log(np.maximum(p["train_counts"], 1) / p["train_counts"].sum())
    err = {}
    for split in ("select", "test"):
        logp, labels = p[f"{split}_logp"].astype(np.float32), p[f"{split}_labels"]
        err[split] = [mean_error(labels, (logp - t * log_prior).argmax(1)) for t in TAUS]
    best = int(np.argmin(err["select"]))
    return {
        "tau": float(TAUS[best]),
        "select_before": err["select"][0],
        "select_after": err["select"][best],
        "test_before": err["test"][0],
        "test_after": err["test"][best],
    }


def summary_line(results: Path, setting: str) -> str:
    """`setting=... classes=...` with the claim rows' test means and the recipe-minus-cleanlab pairs by seed."""
    rows = load_rows(results, setting)
    by_seed = {name: {r["seed"]: r for r in rows.get(name, [])} for name in rows}
    get = lambda name: by_seed.get(name, {})  # noqa: E731
    recipe = get(DEFAULT_ROW)
    # cleanlab in its strongest fair setting: with every downstream change the default adopted (the adjustment)
    cleanlab = get("cleanlab_la") if DEFAULT_ROW.endswith("_la") and get("cleanlab_la") else get("cleanlab")
    variant = DEFAULT_ROW.removeprefix("recipe_")
    own = get(f"matched_oracle_{variant}")  # the default measured against itself on the true labels, where run
    base = get("baseline")
    ceil = own if recipe and own and all(s in own for s in recipe) else get("matched_oracle")

    def mean(rs: dict, key: str = "test_mean_top1_error") -> str:
        v = [r[key] for r in rs.values() if r.get(key) is not None]
        return f"{np.mean(v):.4f}" if v else "-"

    pairs = [recipe[s]["test_mean_top1_error"] - cleanlab[s]["test_mean_top1_error"] for s in recipe if s in cleanlab]
    gaps = []
    if setting != "clean":
        b = {s: r["test_mean_top1_error"] for s, r in base.items()}
        c = {s: r["test_mean_top1_error"] for s, r in ceil.items()}
        gaps = _gaps(list(recipe.values()), b, c)
    seen = {
        n: [r["images_seen"] for r in rs.values() if r.get("images_seen")] for n, rs in (("r", recipe), ("c", cleanlab))
    }
    ratio = f"{np.mean(seen['r']) / np.mean(seen['c']):.3f}" if seen["r"] and seen["c"] else "-"
    classes = 10
    return (
        f"setting={setting} classes={classes} seeds={len(recipe)} recipe={mean(recipe)} cleanlab={mean(cleanlab)} "
        f"oracle={mean(ceil)} baseline={mean(base)} "
        f"paired_vs_cleanlab={f'{np.mean(pairs):+.4f}' if pairs else '-'} "
        f"paired_worst={f'{max(pairs):+.4f}' if pairs else '-'} "
        f"gap_closed={f'{np.mean(gaps):.3f}' if gaps else '-'} images_ratio={ratio}"
    )


# -- main --------------------------------------------------------------------------------------------------------
def run_plan(bench: Bench, plan: list[str]) -> None:
    """Items `setting:row:seed`, rows: baseline, oracle_plain, matched_oracle, cleanlab, recipe_<variant>."""
    for item in plan:
        setting, row, seed = item.split(":")
        seed = int(seed)
        if row.startswith("recipe_"):
            bench.recipe_row(setting, seed, row.removeprefix("recipe_"))
        else:
            getattr(bench, f"{row}_row")(setting, seed)


DEFAULT_PLAN = [
    *[
        f"{s}:{r}:0"
        for s in ("sym20", "confusion30")
        for r in ("recipe_auto", "matched_oracle", "oracle_plain", "baseline", "cleanlab")
    ],
    *[
        f"{s}:{r}:{seed}"
        for seed in (1, 2)
        for s in ("sym20", "confusion30")
        for r in ("recipe_auto", "matched_oracle", "oracle_plain", "baseline", "cleanlab")
    ],
    "clean:recipe_auto:0",
    "clean:baseline:0",
    "clean:recipe_fixed:0",
    *[f"{s}:{r}:0" for s in ("sym20", "confusion30") for r in ("recipe_fixed", "recipe_paper", "recipe_ensemble")],
    "sym20-noisyval:recipe_auto:0",
    "sym20-noisyval:baseline:0",
    "sym20-noisyval:recipe_fixed:0",
]

# v3: the claim rows first (default recipe, cleanlab, matched oracle, budget baseline), seed by seed
CLAIM_ROWS = ("recipe_auto", "cleanlab", "matched_oracle", "baseline")
DEFAULT_PLAN_V3 = [
    *[f"confusion30:{r}:{seed}" for seed in range(5) for r in CLAIM_ROWS],
    *[
        f"{s}:{r}:{seed}"
        for seed in range(3)
        for s in ("sym20", "clean")
        for r in CLAIM_ROWS
        if s == "sym20" or r in ("recipe_auto", "baseline")
    ],
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cpu-small", help="recipe name or YAML")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 per process when running several)")
    p.add_argument("--design", choices=("v3", "v2"), default="v3", help="benchmark design (see above)")
    p.add_argument("--work", default=None, help="model folders (large, not committed; default runs/bench-<design>)")
    p.add_argument(
        "--results", default=None, help="row JSONs (small, committed; default benchmarks/results/recipe_<design>)"
    )
    p.add_argument(
        "--plan",
        nargs="*",
        default=None,
        help="setting:row:seed items (default: the whole table, the rows that carry the claim first)",
    )
    p.add_argument("--table", action="store_true", help="only print the tables from the cached rows")
    p.add_argument("--summary", action="store_true", help="only print one paired summary line per setting")
    p.add_argument(
        "--paired",
        nargs=2,
        metavar=("ROW_A", "ROW_B"),
        help="only print A - B per seed on the selection split and test, with paired bootstrap intervals",
    )
    p.add_argument("--logit-adjust", action="store_true", help="only print each row's post-hoc logit adjustment")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work or f"runs/bench-{args.design}")
    bench = Bench(args.recipe, work, Path(args.results or f"benchmarks/results/recipe_{args.design}"), args.design)
    if args.paired:
        for setting in SETTINGS:
            for line in paired_lines(bench.results, setting, *args.paired):
                print(line)
        return
    if args.logit_adjust:
        for setting in SETTINGS:
            for path in (
                sorted((bench.results / setting).glob("*.preds.npz")) if (bench.results / setting).is_dir() else []
            ):
                with np.load(path) as z:
                    la = logit_adjusted({k: z[k] for k in z.files})
                if la:
                    print(
                        f"{setting} {path.name.removesuffix('.preds.npz')}: tau {la['tau']:g}; select "
                        f"{la['select_before']:.4f} -> {la['select_after']:.4f}; test {la['test_before']:.4f} -> "
                        f"{la['test_after']:.4f}"
                    )
        return
    if args.summary:
        for setting in SETTINGS:
            if (bench.results / setting).is_dir():
                print(summary_line(bench.results, setting))
        return
    if not args.table:
        run_plan(
            bench, args.plan if args.plan is not None else (DEFAULT_PLAN_V3 if args.design == "v3" else DEFAULT_PLAN)
        )
    for setting in SETTINGS:
        table = to_markdown(bench.results, setting)
        if table:
            print(table + "\n", flush=True)


if __name__ == "__main__":
    main()
