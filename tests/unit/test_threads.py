"""The default torch thread count leaves cores that other work keeps busy alone (lossguided/threads.py)."""

import pytest
import torch

from lossguided import threads
from lossguided.cli import build_parser


@pytest.fixture
def cores(monkeypatch):
    def set_cores(usable: int, busy: int) -> None:
        monkeypatch.setattr(threads, "usable_cores", lambda: usable)
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: busy)

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    yield set_cores
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("usable", "busy", "ranks", "expected"),
    [(2, 0, 1, 2), (2, 1, 1, 1), (2, 5, 1, 1), (16, 2, 1, 14), (16, 0, 4, 4), (16, 14, 4, 2)],
)
def test_default_is_the_free_share_of_the_usable_cores(cores, monkeypatch, usable, busy, ranks, expected):
    cores(usable, busy)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert threads.configure() == expected == torch.get_num_threads()


def test_an_explicit_count_and_omp_num_threads_win(cores, monkeypatch):
    cores(2, 1)
    assert threads.configure(2) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.configure() == 2
    with pytest.raises(ValueError, match="integer >= 1"):
        threads.configure(0)


def test_busy_elsewhere_reads_the_run_queue():
    assert threads.busy_elsewhere() >= 0  # this process is running, so the queue holds at least itself


def test_threads_flag_before_or_after_the_command():
    assert build_parser().parse_args(["--threads", "1", "eda", "x.csv", "--out", "o"]).threads == 1
    assert build_parser().parse_args(["eda", "x.csv", "--out", "o", "--threads", "3"]).threads == 3
    assert build_parser().parse_args(["eda", "x.csv", "--out", "o"]).threads is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eda", "x.csv", "--out", "o", "--threads", "0"])
