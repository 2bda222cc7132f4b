"""Read a run folder (`lossguided run` / `train` output) for the report, tolerating an unfinished or interrupted
run: whatever is missing becomes a notice for the page instead of an error."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lossguided.data.manifest import DataError
from lossguided.losstable import LossTable

_STAGE = re.compile(r"(pretrain|record(\d+)|refine(\d+))")


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


def stage_order(name: str) -> tuple[int, int]:
    """pretrain, record1, refine1, record2, refine2, ..."""
    m = _STAGE.fullmatch(name)
    if m is None:
        return (10**9, 0)
    if m[1] == "pretrain":
        return (0, 0)
    return (int(m[2] or m[3]), 0 if m[2] else 1)


def read_run(run_dir: str | Path, *, round: int = 1) -> RunFolder:  # noqa: A002
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    out = RunFolder(path=run, round=round)
    _read_config(out)
    present = sorted((d.name for d in run.iterdir() if d.is_dir() and _STAGE.fullmatch(d.name)), key=stage_order)
    rounds = (out.config or {}).get("refine", {}).get("rounds") if out.config else None
    expected = ["pretrain"] + [f"{s}{r}" for r in range(1, (rounds or 0) + 1) for s in ("record", "refine")]
    for name in expected:
        if name not in present:
            out.notices.append(f"stage {name} has not started (no folder {name}/): the run stopped before it")
    if not present:
        out.notices.append(f"{run} holds no stage folder (pretrain/, record1/, refine1/, ...): is it a run folder?")
    for name in present:
        if not (run / name / "done.json").is_file():
            out.notices.append(f"stage {name} has no done.json: it was interrupted or is still running, so its "
                               "results are missing (its curve shows the epochs it logged)")  # fmt: skip
    _read_stages(out, present)
    for name in present:
        records = _read_jsonl(run / name / "metrics.jsonl", out.notices)
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
        out.notices.append("metrics.json missing: the run has not finished (or was interrupted); the stages table "
                           "shows only the finished stages, from their done.json")  # fmt: skip
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
    path = out.path / f"record{r}" / "losses.npz"
    if not path.is_file():
        out.notices.append(f"record{r}/losses.npz missing: no loss histogram and no per-class gallery "
                           f"(loss recording of round {r} has not finished)")  # fmt: skip
        return
    try:
        out.table = LossTable.load(path)
    except DataError as e:
        out.notices.append(f"loss table unreadable: {e}")
        return
    sel = out.path / f"refine{r}" / "selected.csv"
    if not sel.is_file():
        out.notices.append(f"refine{r}/selected.csv missing: the gallery shows no selected samples")
        return
    try:
        with open(sel, newline="") as f:
            out.selected_ids = np.array(sorted(int(rec["id"]) for rec in csv.DictReader(f)), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        out.notices.append(f"refine{r}/selected.csv unreadable ({e!r}): the gallery shows no selected samples")
