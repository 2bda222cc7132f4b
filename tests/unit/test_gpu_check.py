"""The prepared GPU check runs every section end to end (on CPU, tiny sizes) and ends with its name=value line;
without CUDA and without --allow-cpu it says so in one line and exits 0."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        "gpu_check: skipped, no CUDA device (torch.cuda.is_available() is False)"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU check of the script")
def test_every_section_runs_on_cpu(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "SUMMARY", {})
    assert gpu_check.main(["--allow-cpu", "--tiny", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "failed" not in out and "skipped:" not in out, out
    last = dict(pair.split("=", 1) for pair in out.strip().splitlines()[-1].split())
    for key in ("gpu", "step_b8_nchw", "best_layout", "recorder_overhead", "save_s", "bf16_loss_rank_corr"):
        assert key in last, key
    assert "input_jpeg_shards_w1" in last and "ensemble_exact_s_250k" in last
