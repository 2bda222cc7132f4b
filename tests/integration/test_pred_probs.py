"""`lossguided losses --pred-probs`: the full [N, K] probability matrix (float16 .npy, the loss table's id order)
written beside the loss table, and cleanlab's `find_label_issues` called on it as the README shows."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from lossguided.cli import main
from lossguided.engine.recorder import LossRecorder
from lossguided.losstable import LossTable

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = ["--model", "test_resnet", "--no-pretrained", "--image-size", "16", "--batch-size", "8", "--lr", "1e-3"]


def test_recorder_writes_each_samples_softmax_in_sorted_id_order():
    ids = np.array([30, 10, 20, 40])
    out = np.full((4, 3), np.nan, dtype=np.float16)
    rec = LossRecorder(ids, pred_probs=3, pred_probs_out=out)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0], [-2.0, 0.0, 4.0]])
    for part in (slice(0, 2), slice(2, 4)):  # two steps, ids in the loader's order
        rec.update(torch.tensor(ids[part]), torch.zeros(2), logits[part])
    rec.end_epoch()
    expected = torch.softmax(logits, 1).numpy()[np.argsort(ids)]
    np.testing.assert_allclose(out.astype(np.float32), expected, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[4, 5\]"):
        LossRecorder(ids, pred_probs=5, pred_probs_out=out)


def readme_block(lang: str) -> str:
    """The first ```lang block of the README's "Probabilities for cleanlab" section."""
    text = README.read_text()
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, text.index("### Probabilities for cleanlab"))
    assert m, f"no ```{lang} block in the README's cleanlab section"
    return m.group(1)


def test_losses_pred_probs_feed_cleanlab_as_the_readme_shows(tmp_path, image_csv, capsys, monkeypatch):
    from cleanlab.filter import find_label_issues

    monkeypatch.chdir(tmp_path)  # image_csv is tmp_path/train.csv, the README's train.csv
    assert main(["train", "--train", "train.csv", "--out", "runs/pre", "--epochs", "1", "--workers", "0", *TINY]) == 0
    capsys.readouterr()
    (command,) = [shlex.split(line) for line in readme_block("bash").splitlines() if line.startswith("lossguided ")]
    assert main([*command[1:], "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_probs"] == "runs/pred_probs.npy"
    table = LossTable.load("runs/losses.npz")
    pred_probs = np.load("runs/pred_probs.npy", mmap_mode="r")
    assert pred_probs.shape == (24, 3) and pred_probs.dtype == np.float16
    assert not list((tmp_path / "runs").glob(".*.tmp"))  # written atomically: no temporary file left
    # the same recording as the table's: each row sums to 1, holds the given label's probability and the top-5
    np.testing.assert_allclose(pred_probs.astype(np.float32).sum(1), 1.0, atol=1e-2)
    rows = np.arange(len(table))
    np.testing.assert_allclose(pred_probs[rows, table.labels], table.p_label, atol=2e-3)
    np.testing.assert_allclose(pred_probs[rows[:, None], table.top_classes[:, :3]], table.top_probs[:, :3], atol=2e-3)

    namespace: dict = {}
    exec(compile(readme_block("python"), "README.md (cleanlab)", "exec"), namespace)  # the README's snippet
    issues = namespace["issues"]
    assert set(issues.tolist()) == set(np.flatnonzero(find_label_issues(table.labels, pred_probs)).tolist())
    assert len(capsys.readouterr().out.splitlines()) == min(10, len(issues))

    argv = ["losses", "--checkpoint", "runs/pre/best.pt", "--train", "train.csv", "--out", "runs/l.npz"]
    assert main([*argv, "--pred-probs", "runs/p.csv"]) == 2
    assert "name it p.npy" in capsys.readouterr().err
