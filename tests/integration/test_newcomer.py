"""A newcomer's path, as the README prints it: the stage-by-stage commands and the "From Python" code run on tiny
data made here, and the Python API does what its names say."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"
SKUS = ["SKU-10023-MUG", "SKU-10023-CUP", "SKU-20417-PLATE"]


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block after `heading` in the README."""
    text = README.read_text()
    start = text.index(heading)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"no ```{lang} block after {heading!r} in README.md"
    return m.group(1)


def make_images(folder: Path, n: int = 30, *, seed: int = 0) -> list[tuple[str, str]]:
    """n small PNGs in 3 SKU classes, each class its own colour (so a model can learn), as (relative path, label)."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = i % 3
        arr = (rng.random((24, 24, 3)) * 60).astype(np.uint8)
        arr[..., c] += 180
        Image.fromarray(arr).save(folder / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", SKUS[c]))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """train.csv, val.csv and test.csv in the working folder, as a newcomer's project would have them."""
    rows = make_images(tmp_path)
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "val.csv", rows[::2])
    write_csv(tmp_path / "test.csv", rows[1::2])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_from_python_section_runs_as_printed(tiny_project, capsys):
    code = readme_block("## From Python", "python")
    namespace: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    table, suspects, metrics = namespace["table"], namespace["suspects"], namespace["metrics"]
    assert len(table) == 30 and set(suspects.class_names) == set(SKUS)
    assert all(str(p).endswith(".png") and Path(p).is_file() for p in table.paths[:3])
    assert (tiny_project / "losses.npz").is_file() and (tiny_project / "runs/py/metrics.json").is_file()
    names = [s["name"] for s in metrics["stages"]]
    assert names[:2] == ["pretrain", "refine1"] and names[2].startswith("logit-adjusted (tau ")  # the default's
    assert len(capsys.readouterr().out.splitlines()) >= 6


# What a tiny test run changes in the printed commands: a small model from scratch, small images, one epoch.
TINY_TRAIN = [
    "--model",
    "resnet10t",
    "--no-pretrained",
    "--image-size",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--workers",
    "0",
]


def test_stage_by_stage_block_runs_as_printed(tiny_project, capsys):
    from lossguided.cli import main

    text = README.read_text()
    lines = text[text.index("# Stage by stage\n") :].split("```", 1)[0].splitlines()[1:]
    commands = [shlex.split(line.split("#", 1)[0]) for line in lines if line.startswith("lossguided ")]
    assert [c[1] for c in commands] == ["train", "losses", "select", "train", "evaluate"]
    for argv in commands:
        extra = TINY_TRAIN if argv[1] == "train" else []
        assert main(argv[1:] + extra) == 0, f"README line failed: {' '.join(argv)}\n{capsys.readouterr().err}"
    out = capsys.readouterr().out
    assert "mean_top1_error" in out
    assert (tiny_project / "runs/ft/best.pt").is_file()
    assert not (tiny_project / "runs/losses_record").exists()  # the recording's work folder is gone
    assert main(["report", "runs", "--out", "runs/report.html"]) == 0  # not a `run` folder: its table and curves
    page = (tiny_project / "runs/report.html").read_text()
    assert "SKU-20417-PLATE" in page and "is not a `lossguided run` folder" in page


def test_run_keeps_weights_only_in_finished_stages_and_prints_its_disk_use(tiny_project, capsys):
    import torch

    from lossguided.cli import main

    args = [
        "run",
        "cpu-small",
        "--train",
        "train.csv",
        "--val",
        "val.csv",
        "--workers",
        "0",
        "--image-size",
        "16",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
        "--set",
        "refine.rounds=1",
    ]
    assert main([*args, "--out", "runs/a"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"runs/a: [\d.]+ [KMG]?B on disk \([\d.]+ [KMG]?B of optimizer state dropped", out), out
    for ckpt in Path("runs/a").rglob("*.pt"):  # no ensemble here: every stage is slimmed
        assert "optimizer" not in torch.load(ckpt, weights_only=True), ckpt
    assert main([*args, "--out", "runs/a"]) == 0  # a rerun finds every stage done
    assert "optimizer state dropped" not in capsys.readouterr().out
    assert main([*args, "--out", "runs/b", "--keep-optimizer"]) == 0
    assert "optimizer" in torch.load("runs/b/pretrain/last.pt", weights_only=True)
