"""A GPU machine never trains on its CPU without a word, and the collective timeout is a setting."""

from datetime import timedelta

import pytest
import torch

from lossguided import distributed
from lossguided.cli import main


@pytest.fixture
def unusable_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "visible_gpus", lambda: ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)",))
    monkeypatch.setattr(distributed, "driver_version", lambda: "470.82")
    monkeypatch.delenv(distributed.ALLOW_CPU_ENV, raising=False)


def test_a_gpu_torch_cannot_use_stops_with_one_line(unusable_gpu, capsys):
    with pytest.raises(distributed.DeviceError, match=r"NVIDIA H100 80GB HBM3 \(driver 470.82\).*cannot use it"):
        distributed.check_cuda_usable()
    assert main(["eda", "fashion-mnist", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "driver 470.82" in err[0] and "LOSSGUIDED_ALLOW_CPU=1" in err[0]


def test_allow_cpu_accepts_the_cpu(unusable_gpu, monkeypatch):
    monkeypatch.setenv(distributed.ALLOW_CPU_ENV, "1")
    distributed.check_cuda_usable()


def test_no_gpu_at_all_is_fine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "visible_gpus", lambda: ())
    distributed.check_cuda_usable()


def test_collective_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.collective_timeout() == timedelta(hours=1)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.collective_timeout() == timedelta(seconds=90)
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(distributed.DeviceError, match="seconds > 0"):
            distributed.collective_timeout()
