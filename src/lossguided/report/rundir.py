"""Read a run folder for the report, tolerating an unfinished or interrupted run: whatever is missing becomes a
notice for the page instead of an error. The folder's layout comes from `lossguided.layout` (what `recipe.py`
writes). A folder of stage-by-stage commands (`train`, `losses`, `select` into one `--out` parent) is read too:
its loss table, the selection beside it and the learning curves of its training folders; a folder with no loss
table and no run is a one-line error naming what the report needs."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lossguided import layout
from lossguided.data.manifest import DataError
from lossguided.layout import stage_order  # noqa: F401  (the report's sort key, kept here for callers)
from lossguided.losstable import LossTable


@dataclass
class RunFolder:
    path: Path
    round: int
    config: dict | None = None
    stages: list[dict] = field(default_factory=list)  # Table-2 rows
    curves: list[tuple[str, list[dict]]] = field(default_factory=list)  # stage -> metrics.jsonl records
    table: LossTable | None = None
    selected_ids: np.ndarray | None = None
    notices: list[str] = field(default_factory=list)

    def refine_setting(self, key: str):
        return ((self.config or {}).get("refine") or {}).get(key)


def read_run(run_dir: str | Path, *, round: int | None = None) -> RunFolder:  # noqa: A002
    """A run folder as the report shows it: round `round`, by default the last one whose losses were recorded."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    folder = layout.RunLayout(run)
    if round is None:
        recorded = [r for r in range(1, 100) if folder.losses(r).is_file()]
        round = recorded[-1] if recorded else 1  # noqa: A001
    out = RunFolder(path=run, round=round)
    present = folder.present()
    if not present and not folder.metrics.is_file() and not folder.config.is_file():
        return _read_loose(out)
    _read_config(out)
    rounds = (out.config or {}).get("refine", {}).get("rounds") if out.config else None
    expected = folder.stages(rounds or 0)
    for name in expected:
        if name not in present:
            out.notices.append(f"stage {name} has not started (no folder {name}/): the run stopped before it")
    if not present:
        out.notices.append(f"{run} holds no stage folder (pretrain/, record1/, refine1/, ...): is it a run folder?")
    for name in present:
        if not (run / name / layout.DONE).is_file():
            out.notices.append(
                f"stage {name} has no done.json: it was interrupted or is still running, so its "
                "results are missing (its curve shows the epochs it logged)"
            )
    _read_stages(out, present)
    for name in present:
        records = _read_jsonl(run / name / layout.EPOCHS, out.notices)
        if records:
            out.curves.append((name, records))
    _read_losses(out)
    return out


def _read_config(out: RunFolder) -> None:
    path = out.path / "config.yaml"
    if not path.is_file():
        out.notices.append("config.yaml missing: the drop threshold and the built-in data options are unknown")
        return
    try:
        data = yaml.safe_load(path.read_text())
        out.config = data if isinstance(data, dict) else None
    except yaml.YAMLError as e:
        out.notices.append(f"config.yaml unreadable ({str(e).splitlines()[0]})")


def _read_stages(out: RunFolder, present: list[str]) -> None:
    path = out.path / "metrics.json"
    if path.is_file():
        try:
            out.stages = list(json.loads(path.read_text()).get("stages", []))
            return
        except (json.JSONDecodeError, AttributeError) as e:
            out.notices.append(f"metrics.json unreadable ({e}); the stages table comes from each stage's done.json")
    else:
        out.notices.append(
            "metrics.json missing: the run has not finished (or was interrupted); the stages table "
            "shows only the finished stages, from their done.json"
        )
    for name in present:
        done = out.path / name / "done.json"
        if done.is_file() and not name.startswith("record"):
            try:
                out.stages.append(json.loads(done.read_text()))
            except json.JSONDecodeError:
                out.notices.append(f"{name}/done.json unreadable")


def _read_jsonl(path: Path, notices: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    records, bad = [], 0
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        notices.append(f"{path.parent.name}/metrics.jsonl: {bad} unreadable line(s) skipped (a killed write?)")
    return records


def _read_losses(out: RunFolder) -> None:
    r = out.round
    path = layout.RunLayout(out.path).losses(r)
    if not path.is_file():
        out.notices.append(
            f"record{r}/losses.npz missing: no loss histogram and no per-class gallery "
            f"(loss recording of round {r} has not finished)"
        )
        return
    try:
        out.table = LossTable.load(path)
    except DataError as e:
        out.notices.append(f"loss table unreadable: {e}")
        return
    sel = layout.RunLayout(out.path).selected(r)
    if not sel.is_file():
        out.notices.append(f"refine{r}/selected.csv missing: the gallery shows no selected samples")
        return
    _read_selection(out, sel)


def _read_selection(out: RunFolder, sel: Path) -> None:
    try:
        with open(sel, newline="") as f:
            out.selected_ids = np.array(sorted(int(rec["id"]) for rec in csv.DictReader(f)), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        name = sel.relative_to(out.path) if sel.is_relative_to(out.path) else sel
        out.notices.append(f"{name} unreadable ({e!r}): the gallery shows no selected samples")


# -- a folder of stage-by-stage commands ------------------------------------------------------------------------
def _read_loose(out: RunFolder) -> RunFolder:
    """`runs/` of the README's stage by stage: pre/ and ft/ (train), losses.npz (losses), clean.csv (select)."""
    run = out.path
    tables = sorted(p for pattern in ("*.npz", "*/*.npz") for p in run.glob(pattern) if p.stem != "head")
    for path in tables:
        try:
            out.table = LossTable.load(path)
        except (DataError, OSError, ValueError, KeyError):
            continue
        break
    if out.table is None:
        raise DataError(
            f"{run}: not a `lossguided run` folder (no pretrain/, record1/ or metrics.json) and no loss "
            "table in it; report needs one of them: a run folder, or a folder holding the .npz of "
            "`lossguided losses` (with the selected CSV of `lossguided select` and training folders "
            "beside it)"
        )
    used = path.relative_to(run)
    out.notices.append(
        f"{run} is not a `lossguided run` folder: the page shows the loss table {used}, the "
        "selection and the learning curves found beside it, and no stages table"
    )
    trained = sorted(d for d in run.iterdir() if d.is_dir() and (d / layout.EPOCHS).is_file())
    for d in trained:
        records = _read_jsonl(d / layout.EPOCHS, out.notices)
        if records:
            out.curves.append((d.name, records))
        if out.config is None and (d / layout.CONFIG).is_file():
            out.config = yaml.safe_load((d / layout.CONFIG).read_text())
    selections = sorted(p.with_name(p.name.removesuffix(".summary.csv") + ".csv") for p in run.glob("*.summary.csv"))
    selections = [p for p in selections if p.is_file()]
    if selections:
        _read_selection(out, selections[0])
        stats = selections[0].with_suffix(".stats.json")
        threshold = json.loads(stats.read_text()).get("drop_loss_above") if stats.is_file() else None
        if threshold is not None and out.config is not None:
            out.config.setdefault("refine", {})["drop_loss_above"] = threshold
    else:
        out.notices.append(
            f"no selection (the CSV of `lossguided select`, with its .summary.csv) in {run}: the "
            "gallery shows no selected samples"
        )
    return out
