"""Where things are written: the run-folder layout that `recipe.py` writes and the report reads, the work folder of
`lossguided losses`, the rule for image paths in every CSV the tool writes, and the disk a run takes.

A run folder (`lossguided run --out RUN`):

    RUN/config.yaml                the resolved config
    RUN/metrics.json               the stages table (Table 2), written last
    RUN/pretrain/                  best.pt, last.pt, metrics.jsonl, done.json
    RUN/record<R>/losses.npz       round R's loss table (and the recording's own checkpoints)
    RUN/refine<R>/selected.csv     round R's selection, then its fine-tune: best.pt, last.pt, metrics.jsonl
    RUN/ensemble/                  extra seeds and saved features (with ensemble.seeds)

Paths in written CSVs are absolute (built-in images keep their `fashion-mnist:train#123` names): a CSV then reads
back the same from any folder it is moved to or read from, and the tool reads relative paths against the CSV's own
folder, so a hand-made manifest keeps working too.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.json"
DONE = "done.json"
EPOCHS = "metrics.jsonl"
LOSSES = "losses.npz"
SELECTED = "selected.csv"
BEST, LAST = "best.pt", "last.pt"
PRETRAIN, ENSEMBLE = "pretrain", "ensemble"
SLIMMED = ".weights-only"  # marks a finished stage whose checkpoints were rewritten without optimizer state
_STAGE = re.compile(r"(pretrain|record(\d+)|refine(\d+))")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder; nothing here touches the disk."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def pretrain(self) -> Path:
        return self.root / PRETRAIN

    def record(self, r: int) -> Path:
        return self.root / f"record{r}"

    def refine(self, r: int) -> Path:
        return self.root / f"refine{r}"

    def losses(self, r: int) -> Path:
        return self.record(r) / LOSSES

    def selected(self, r: int) -> Path:
        return self.refine(r) / SELECTED

    @property
    def adjust(self) -> Path:
        """The last round's model with its logits adjusted for the class prior (refine.logit_adjust)."""
        return self.root / "adjust"

    def stages(self, rounds: int) -> list[str]:
        """Stage folder names in run order: pretrain, record1, refine1, record2, ..."""
        return [PRETRAIN] + [f"{s}{r}" for r in range(1, rounds + 1) for s in ("record", "refine")]

    def present(self) -> list[str]:
        """The stage folders that exist, in run order."""
        if not self.root.is_dir():
            return []
        found = (d.name for d in self.root.iterdir() if d.is_dir() and _STAGE.fullmatch(d.name))
        return sorted(found, key=stage_order)


def stage_order(name: str) -> tuple[int, int]:
    """Sort key: pretrain, record1, refine1, record2, refine2, ...; anything else last."""
    m = _STAGE.fullmatch(name)
    if m is None:
        return (10**9, 0)
    if m[1] == PRETRAIN:
        return (0, 0)
    return (int(m[2] or m[3]), 0 if m[2] else 1)


def record_work_dir(losses_path: str | os.PathLike) -> Path:
    """Where `lossguided losses --out X.npz` trains its recording pass: `X_record/` beside the table."""
    path = Path(losses_path)
    return path.parent / (path.stem + "_record")


def remove_work_dir(work_dir: str | os.PathLike) -> int:
    """Delete a finished work folder; returns the bytes freed."""
    work_dir = Path(work_dir)
    freed = disk_use(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return freed


def csv_path(path: str | os.PathLike) -> str:
    """An image path as every CSV the tool writes names it: absolute, so the CSV reads back from anywhere; a
    built-in image (`fashion-mnist:train#123`, no file) keeps its name."""
    text = str(path)
    if re.match(r"[a-z][a-z0-9-]+:[a-z]+#\d+$", text):
        return text
    return os.path.abspath(text)


def disk_use(folder: str | os.PathLike) -> int:
    """Bytes of the files under `folder` (0 when it does not exist)."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
