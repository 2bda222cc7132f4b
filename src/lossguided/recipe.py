"""The whole method as one resumable recipe: pre-train, then `rounds` times record losses, select the clean,
balanced list and fine-tune on it. Each stage works in `OUT/<stage>/` and writes `done.json` last, so a rerun
skips finished stages and the trainer resumes an interrupted one from its `last.pt`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import yaml

from lossguided import layout, runlock, stages, threads
from lossguided.config import RUNTIME_FIELDS, ConfigError, RecipeConfig, differences, from_dict, to_dict
from lossguided.distributed import barrier, broadcast_object, get_info
from lossguided.io import write_json, write_text
from lossguided.losstable import LossTable
from lossguided.refine.apply import (
    drop_decision,
    relabel_candidates,
    select_with_info,
    selection_stats,
    write_selection,
)

log = logging.getLogger("lossguided")


def _done(stage_dir: Path) -> dict | None:
    path = stage_dir / layout.DONE
    return json.loads(path.read_text()) if path.is_file() else None


def _finish(stage_dir: Path, result: dict) -> dict:
    if get_info().is_main:
        write_json(stage_dir / layout.DONE, result)
    barrier()
    return result


def _test_row(name: str, ckpt: Path, splits: stages.Splits, cfg: RecipeConfig, extra: dict) -> dict:
    row = {"name": name, "checkpoint": f"{ckpt.parent.name}/{ckpt.name}", **extra}  # relative: the folder can move
    for split_name, manifest in (("val", splits.val), ("test", splits.test)):
        if manifest is not None:
            m = stages.evaluate_checkpoint(
                ckpt, manifest, image_size=cfg.data.image_size, loader_kw=stages.loader_kwargs(cfg.data)
            )
            row[f"{split_name}_mean_top1_error"] = m["mean_top1_error"]
            row[f"{split_name}_top1_error"] = m["top1_error"]
    return row


def _check_resumable(cfg: RecipeConfig, out_dir: Path) -> None:
    """A rerun must be the same recipe: resuming a folder made with other settings would mix two experiments."""
    saved = out_dir / "config.yaml"
    if saved.is_file():
        before = to_dict(from_dict(yaml.safe_load(saved.read_text())))  # fields added since then take defaults
        now = to_dict(cfg)
        before["ensemble"] = now["ensemble"]  # the ensemble only adds a last stage: it may change between runs
        for section, name in (key.split(".") for key in RUNTIME_FIELDS):  # may differ on another machine
            before[section][name] = now[section][name]
        if before != now:
            raise ConfigError(
                f"{out_dir}: holds a run with other settings ({differences(before, now)}); "
                "use a new --out or the same settings"
            )


DATA_KEY = "data_key.json"


def _data_key(splits: stages.Splits) -> dict:
    """Per split: its size and a digest of its ids and labels (what a finished stage was computed from)."""
    key = {}
    for name in ("train", "val", "test"):
        m = getattr(splits, name)
        if m is None:
            continue
        digest = hashlib.sha256(np.ascontiguousarray(m.ids, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(m.labels, dtype=np.int64).tobytes())
        digest.update("\0".join(m.classes.names).encode())
        key[name] = {"samples": int(len(m)), "sha256": digest.hexdigest()}
    return key


def _check_same_data(key: dict, out_dir: Path) -> None:
    """A rerun whose data changed (an edited label, a row more) must not reuse stages computed from the old data:
    `train` refuses that case through its run key, and `run` does here, naming the split."""
    saved = out_dir / DATA_KEY
    if not saved.is_file():
        return
    before = json.loads(saved.read_text())
    for name in sorted(set(before) | set(key)):
        if before.get(name) != key.get(name):
            was, now = before.get(name) or {}, key.get(name) or {}
            raise ConfigError(
                f"{out_dir}: holds a run on other data: the {name} split's ids or labels changed ({was.get('samples')} "
                f"samples then, {now.get('samples')} now); use a new --out, or remove the folder to start over"
            )


def run_recipe(cfg: RecipeConfig, *, out_dir: str | Path) -> dict:
    """Run (or resume) every stage; returns and writes OUT/metrics.json {"stages": [...]} in run order. The folder
    is this process's while it runs: a second run on it stops at once (runlock)."""
    with runlock.hold(out_dir, enabled=get_info().is_main):
        return _run_recipe(cfg, Path(out_dir))


def _run_recipe(cfg: RecipeConfig, out_dir: Path) -> dict:
    if cfg.data.threads is not None:
        threads.configure(cfg.data.threads)
    _check_resumable(cfg, out_dir)
    splits = stages.load_splits(cfg.data)  # before config.yaml: a start that fails here leaves the folder reusable
    data_key = _data_key(splits)
    _check_same_data(data_key, out_dir)
    if get_info().is_main:
        write_text(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_json(out_dir / DATA_KEY, data_key)
    rows = []

    run = layout.RunLayout(out_dir)
    pre_dir = run.pretrain
    if not (row := _done(pre_dir)):
        log.info("stage pretrain: %d training samples", len(splits.train))
        stages.train(cfg, splits, out_dir=pre_dir, section="pretrain")
        row = _finish(
            pre_dir, _test_row("pretrain", pre_dir / "best.pt", splits, cfg, {"train_samples": len(splits.train)})
        )
    rows.append(row)
    model = out_dir / row["checkpoint"]

    start_model = model
    for r in range(1, cfg.refine.rounds + 1):
        start_model = model  # what round r fine-tunes from (the ensemble's extra seeds start there too)
        rec_dir, ft_dir = run.record(r), run.refine(r)
        if not _done(rec_dir):
            if r == 1 and cfg.record.folds > 1:  # out of fold: the pre-trained model has learned the wrong labels
                log.info(
                    "stage record1: out-of-fold losses of %d samples, %d folds", len(splits.train), cfg.record.folds
                )
                stages.record_losses_cross_fitted(cfg, splits, out_path=run.losses(r), work_dir=rec_dir)
            else:
                rec = cfg.record
                if r > 1 and rec.later_rounds_lr is not None:  # the fine-tuned model, not taught the noise again
                    rec = dataclasses.replace(rec, lr=rec.later_rounds_lr)
                lr = rec.lr if rec.lr is not None else cfg.pretrain.lr
                how = "scored as it is" if lr == 0 else f"{rec.epochs} epoch(s) at lr {lr:g}"
                log.info("stage record%d: losses of %d samples with %s (%s)", r, len(splits.train), model, how)
                stages.record_losses(
                    dataclasses.replace(cfg, record=rec),
                    splits.train,
                    checkpoint_path=model,
                    out_path=run.losses(r),
                    work_dir=rec_dir,
                )
            folds = cfg.record.folds if r == 1 else 1
            lr = cfg.record.later_rounds_lr if r > 1 and cfg.record.later_rounds_lr is not None else cfg.record.lr
            _finish(rec_dir, {"losses": f"{rec_dir.name}/{layout.LOSSES}", "folds": folds, "trained": lr != 0})
        if not (row := _done(ft_dir)):
            table = LossTable.load(run.losses(r))
            refine = cfg.refine
            ids, info = select_with_info(
                table,
                bands=refine.bands,
                drop_loss_above=refine.drop_loss_above,
                drop_quantile=refine.drop_quantile,
                per_class=refine.per_class,
                drop_disagreeing=refine.drop_disagreeing,
                drop_confident_other=refine.drop_confident_other,
            )
            stats = selection_stats(table, ids) | info
            stats["warnings"] = _warn(cfg, table, ids, info, rows[-1].get("val_mean_top1_error"), r)
            new_ids = new_labels = None
            if refine.relabel_confident:  # the dropped look-alikes come back under the class they show
                decision = drop_decision(
                    table,
                    drop_loss_above=refine.drop_loss_above,
                    drop_quantile=refine.drop_quantile,
                    drop_disagreeing=refine.drop_disagreeing,
                    drop_confident_other=refine.drop_confident_other,
                )
                new_ids, new_labels = relabel_candidates(table, decision.dropped)
                stats |= _relabel_stats(table, new_ids, new_labels)
                merged = np.union1d(ids, new_ids)
                labels = table.labels[np.searchsorted(table.ids, merged)].copy()
                labels[np.searchsorted(merged, new_ids)] = new_labels
                ids = merged
            if get_info().is_main:
                write_selection(table, ids, run.selected(r), labels=None if new_ids is None else labels)
            ids = broadcast_object(ids)
            log.info(
                "stage refine%d: fine-tune on %d selected samples %s",
                r,
                len(ids),
                {k: round(v, 4) for k, v in stats.items() if isinstance(v, float)},
            )
            chosen = splits.train.select_ids(np.asarray(ids))
            if new_ids is not None and len(new_ids):
                relabelled = chosen.labels.copy()
                relabelled[chosen.positions_of(new_ids)] = new_labels
                chosen = dataclasses.replace(chosen, labels=relabelled)
            sub = stages.Splits(chosen, splits.val, splits.test)
            stages.train(cfg, sub, out_dir=ft_dir, section="finetune", init_from=model)
            row = _finish(
                ft_dir, _test_row(f"refine{r}", ft_dir / "best.pt", splits, cfg, {"train_samples": len(ids), **stats})
            )
        rows.append(row)
        model = out_dir / row["checkpoint"]

    if cfg.refine.logit_adjust is not None and cfg.refine.rounds >= 1:
        rows.append(_adjust_stage(cfg, splits, run, final=model))
    if cfg.ensemble.seeds and cfg.refine.rounds >= 1:
        rows.append(_ensemble_stage(cfg, splits, out_dir, start_model=start_model, final=model))
    metrics = {"stages": rows}
    ship = verdict(rows, n_val=len(splits.val) if splits.val is not None else 0)
    if ship is not None:
        metrics["ship"] = ship
        log.info("%s", ship["verdict"])
    if get_info().is_main:
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def verdict(rows: list[dict], *, n_val: int) -> dict | None:
    """Which checkpoint to ship and what refinement did, read on val: the stage of the lowest val mean top-1 error
    (a tie keeps the earlier, cheaper one), and the last stage's change from the pre-training with a standard
    error (binomial, unpaired: an approximation that overstates it a little). None without val errors. An ensemble
    row has no single checkpoint: it is reported, the best single model is shipped."""
    scored = [r for r in rows if r.get("val_mean_top1_error") is not None and r.get("checkpoint")]
    if not scored or n_val == 0:
        return None
    best = min(scored, key=lambda r: r["val_mean_top1_error"])  # min keeps the first of equals
    first, last = scored[0]["val_mean_top1_error"], scored[-1]["val_mean_top1_error"]
    se = ((first * (1 - first) + last * (1 - last)) / n_val) ** 0.5
    change = last - first
    text = (
        f"refinement changed val error by {change:+.4f} (+- {se:.4f}, {scored[0]['name']} -> {scored[-1]['name']}); "
        f"ship {best['checkpoint']} (val mean top-1 error {best['val_mean_top1_error']:.4f})"
    )
    return {
        "stage": best["name"],
        "checkpoint": best["checkpoint"],
        "val_mean_top1_error": best["val_mean_top1_error"],
        "val_change": change,
        "val_change_se": se,
        "verdict": text,
    }


def _warn(cfg: RecipeConfig, table: LossTable, ids: np.ndarray, info: dict, val_error, r: int) -> list[str]:
    """The selection's warnings, logged (and with refine.strict an error, before the fine-tune starts)."""
    from lossguided.refine.apply import _confident_other
    from lossguided.refine.warnings import selection_warnings

    second = _confident_other(table) if table.p_label is not None and table.top_classes is not None else None
    warnings = selection_warnings(table, ids, info, val_error=val_error, confident_other=second)
    if warnings and cfg.refine.strict:
        raise ConfigError(f"refine{r}: refine.strict: {warnings[0]}")
    for w in warnings:
        log.warning("refine%d: %s", r, w)
    return warnings


def _selected_labels(path: Path, train) -> np.ndarray:
    """The label of every row of a selection CSV as written (relabelled samples under their new class); a name the
    CSV had to escape for spreadsheets takes the manifest's label of that id."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    labels = train.classes.index_of([r[2] for r in rows])
    unknown = labels < 0
    if unknown.any():
        ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
        labels[unknown] = train.labels[train.positions_of(ids[unknown])]
    return labels


def _relabel_stats(table: LossTable, ids: np.ndarray, labels: np.ndarray) -> dict:
    out = {"relabelled": int(len(ids))}
    if table.true_labels is not None and len(ids):  # benchmarks: how often the new label is the true one
        out["relabel_precision"] = float((table.true_labels[np.searchsorted(table.ids, ids)] == labels).mean())
    return out


def _adjust_stage(cfg: RecipeConfig, splits: stages.Splits, run: layout.RunLayout, *, final: Path) -> dict:
    """The last round's model with tau * log prior subtracted from its logits (folded into the bias), the prior
    being the class shares of that round's training list; tau from the config or, for 'auto', the lowest mean
    top-1 error on data.choose (default val) among engine.prior.TAUS."""
    from lossguided.data.transforms import saved_normalization
    from lossguided.engine import checkpoint
    from lossguided.engine.prior import choose_tau, fold_into_head, log_prior, predictions_by_tau
    from lossguided.models import load_model

    out = run.adjust
    row = _done(out)
    if row and row.get("logit_adjust") == cfg.refine.logit_adjust and row.get("from") == final.parent.name:
        return row
    labels = _selected_labels(final.parent / layout.SELECTED, splits.train)
    k = len(splits.classes)
    prior = log_prior(np.bincount(labels, minlength=k))
    state = checkpoint.load(final)
    model, _ = load_model(state)
    tau, errors, where = cfg.refine.logit_adjust, None, None
    if tau == "auto":
        choose = stages.choice_split(cfg.data, splits)
        if choose is None:
            raise ConfigError("refine.logit_adjust: auto needs a labelled split to choose on (data.choose or val)")
        where = choose.source
        ds = stages.make_dataset(choose, image_size=cfg.data.image_size)
        y, preds = predictions_by_tau(model, ds, prior, normalization=saved_normalization(state))
        tau, errors = choose_tau(y, preds, k)
        log.info("stage adjust: mean top-1 error on %s by tau %s: tau %g", where, errors, tau)
    fold_into_head(model, float(tau), prior)
    if get_info().is_main:
        out.mkdir(parents=True, exist_ok=True)
        adjusted = state | {"model": model.state_dict(), "logit_adjust": {"tau": float(tau), "from": str(final.name)}}
        checkpoint.save(out / "best.pt", adjusted)
    barrier()
    extra = {
        "train_samples": int(len(labels)),
        "logit_adjust": cfg.refine.logit_adjust,
        "tau": float(tau),
        "from": final.parent.name,
    }
    if errors is not None:
        extra |= {"chosen_on": where, "error_by_tau": {str(t): e for t, e in errors.items()}}
    return _finish(out, _test_row(f"logit-adjusted (tau {float(tau):g})", out / "best.pt", splits, cfg, extra))


def _ensemble_stage(cfg: RecipeConfig, splits: stages.Splits, out_dir: Path, *, start_model: Path, final: Path) -> dict:
    """The last fine-tune again with each extra seed, then all of them combined through their saved features
    (summed over the TTA views) on val and test: Table 2's "+ 3 models ensemble". With tta 'auto' the views
    (none or hflip) are the ones with the lower val error: a model trained mostly without flips may not be
    flip-invariant, and then the paper's flip TTA costs accuracy."""
    from lossguided.ensemble.extract import extract_features
    from lossguided.ensemble.predict import predict_ensemble

    ens_dir = out_dir / "ensemble"
    row = _done(ens_dir)
    if row and row.get("seeds") == cfg.ensemble.seeds and row.get("tta") == cfg.ensemble.tta:
        return row
    last = final.parent
    ids = np.loadtxt(last / layout.SELECTED, delimiter=",", skiprows=1, usecols=0, dtype=np.int64, ndmin=1)
    sub = stages.Splits(splits.train.select_ids(ids), splits.val, splits.test)
    models, names = [final], ["final"]
    for seed in cfg.ensemble.seeds:
        seed_cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, seed=seed))
        log.info("stage ensemble: fine-tune seed %d on %d samples", seed, len(ids))
        stages.train(seed_cfg, sub, out_dir=ens_dir / f"seed{seed}", section="finetune", init_from=start_model)
        models.append(ens_dir / f"seed{seed}" / "best.pt")
        names.append(f"seed{seed}")

    def combined(split_name: str, manifest, tta: str) -> dict:
        dirs = []
        for name, ckpt in zip(names, models, strict=True):
            d = ens_dir / "features" / f"{split_name}-{name}-{tta}"
            extract_features(ckpt, manifest, d, tta=tta, image_size=cfg.data.image_size)
            dirs.append(d)
        return predict_ensemble(dirs, labelled=manifest)["metrics"]

    tta, row = cfg.ensemble.tta, {}
    if tta == "auto":
        if splits.val is None:
            tta = "hflip"  # nothing to choose on: the paper's views
            log.info("stage ensemble: tta auto without a val split, using hflip")
        else:
            val = {t: combined("val", splits.val, t) for t in ("none", "hflip")}
            tta = min(val, key=lambda t: (val[t]["mean_top1_error"], t != "hflip"))  # a tie keeps the paper's
            row["val_mean_top1_error_by_tta"] = {t: v["mean_top1_error"] for t, v in val.items()}
            log.info("stage ensemble: val mean top-1 error by TTA %s: using %s", row["val_mean_top1_error_by_tta"], tta)
    chosen = " chosen on val" if cfg.ensemble.tta == "auto" and splits.val is not None else ""
    row |= {
        "name": f"ensemble ({len(models)} models, {tta} TTA{chosen})",
        "train_samples": len(ids),
        "models": [str(m.relative_to(out_dir)) for m in models],
        "seeds": list(cfg.ensemble.seeds),
        "tta": cfg.ensemble.tta,
        "tta_used": tta,
    }
    for split_name, manifest in (("val", splits.val), ("test", splits.test)):
        if manifest is not None:
            m = combined(split_name, manifest, tta)
            row[f"{split_name}_mean_top1_error"] = m["mean_top1_error"]
            row[f"{split_name}_top1_error"] = m["top1_error"]
    return _finish(ens_dir, row)


def format_table(metrics: dict) -> str:
    """Markdown table like the paper's Table 2: one row per stage."""
    lines = [
        "| stage | train samples | purity | val mean top-1 err | test mean top-1 err | test top-1 err |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    for s in metrics["stages"]:
        lines.append(
            f"| {s['name']} | {s.get('train_samples', '-')} | {fmt(s.get('purity'))} | "
            f"{fmt(s.get('val_mean_top1_error'))} | {fmt(s.get('test_mean_top1_error'))} | "
            f"{fmt(s.get('test_top1_error'))} |"
        )
    return "\n".join(lines)
