"""A run folder has one owner: a second process on the same folder stops at once with one line; a lock left by a
killed run is taken over; the trainer takes the lock by itself."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from hostile import REPO

from lossguided import runlock
from lossguided.config import TrainConfig
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.engine.trainer import Trainer
from lossguided.models import create_model

HOLD = (
    "import sys, time; from lossguided import runlock; runlock.acquire(sys.argv[1]); print('held', flush=True); "
    "time.sleep(60)"
)


@pytest.fixture
def holder(tmp_path):
    """Another process that holds `tmp_path/run` until it is killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_process_stops_at_once_naming_the_owner(tmp_path, holder):
    with pytest.raises(runlock.RunFolderBusyError) as e:
        runlock.acquire(tmp_path / "run")
    assert f"pid {holder.pid}" in str(e.value) and "\n" not in str(e.value)


def test_a_killed_owner_is_taken_over(tmp_path, holder, caplog):
    os.kill(holder.pid, signal.SIGKILL)  # no `finally`, no release: the lock file keeps its content
    holder.wait()
    assert (tmp_path / "run" / runlock.LOCK_FILE).read_text().startswith(f"pid {holder.pid}")
    with caplog.at_level(logging.WARNING, logger="lossguided"):
        with runlock.hold(tmp_path / "run"):
            assert runlock.held(tmp_path / "run")
    assert "ended without releasing" in caplog.text
    assert (tmp_path / "run" / runlock.LOCK_FILE).read_text() == ""  # a clean release leaves nothing to take over


def test_locks_are_reentrant_in_one_process_and_released(tmp_path):
    with runlock.hold(tmp_path):
        with runlock.hold(tmp_path):
            pass
        assert runlock.held(tmp_path)
    assert not runlock.held(tmp_path)


def _trainer(out):
    classes = ClassMap(("a", "b"))
    m = Manifest(
        ids=np.arange(8),
        labels=np.arange(8) % 2,
        classes=classes,
        source="mem",
        storage=Storage.arrays(np.zeros((8, 16, 16), np.uint8)),
    )
    return Trainer(
        create_model("test_resnet", num_classes=2),
        make_dataset(m, image_size=16),
        classes=classes,
        cfg=TrainConfig(epochs=1, batch_size=4),
        out_dir=out,
    )


@pytest.mark.parametrize("command", ["trainer", "cli train"])
def test_a_held_folder_is_refused_before_any_write(tmp_path, holder, capsys, command):
    out = tmp_path / "run"
    if command == "trainer":
        with pytest.raises(runlock.RunFolderBusyError, match="in use by another lossguided run"):
            _trainer(out).fit()
    else:
        from hostile import write_manifest

        from lossguided.cli import main

        csv_path, _ = write_manifest(tmp_path / "data")
        rc = main(
            [
                "train",
                "--train",
                str(csv_path),
                "--model",
                "test_resnet",
                "--no-pretrained",
                "--epochs",
                "1",
                "--image-size",
                "16",
                "--out",
                str(out),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "in use by another lossguided run" in err, err
    assert not (out / "last.pt").exists() and not (out / "metrics.jsonl").exists()
    holder.kill()
    holder.wait()
    if command == "trainer":
        assert _trainer(out).fit().epochs_done == 1  # the owner is gone: the folder is free


def _claim(tmp_path, owner: str, age_s: float = 0.0) -> None:
    """Make the held lock file name `owner` and look `age_s` seconds untouched (what a stale NFS lock looks like)."""
    import time

    lock = tmp_path / "run" / runlock.LOCK_FILE
    lock.write_text(owner + "\n")
    then = time.time() - age_s
    os.utime(lock, (then, then))


def test_a_lock_whose_owner_is_gone_is_taken_over(holder, tmp_path, caplog):
    import socket

    _claim(tmp_path, f"pid 999999999 on {socket.gethostname()} since 2026-01-01 00:00:00")  # no such pid here
    with caplog.at_level(logging.WARNING):
        assert runlock.acquire(tmp_path / "run")
    assert "is stale (pid 999999999 is not running on this host)" in caplog.text
    runlock.release(tmp_path / "run")


@pytest.mark.parametrize(("age_s", "taken"), [(3600, True), (5, False)])
def test_a_lock_from_another_host_is_taken_over_only_when_its_heartbeat_stopped(holder, tmp_path, age_s, taken):
    _claim(tmp_path, "pid 4242 on node-that-crashed since 2026-01-01 00:00:00", age_s=age_s)
    if taken:
        assert runlock.acquire(tmp_path / "run")
        runlock.release(tmp_path / "run")
    else:
        with pytest.raises(runlock.RunFolderBusyError, match="node-that-crashed"):
            runlock.acquire(tmp_path / "run")


def test_no_thread_outlives_the_lock(tmp_path):
    """The heartbeat lives only while a lock is held: a process that forks a pool afterwards forks without it."""
    import threading

    before = threading.active_count()
    runlock.acquire(tmp_path / "a")
    runlock.acquire(tmp_path / "b")
    assert threading.active_count() == before + 1  # one heartbeat for all held locks
    runlock.release(tmp_path / "a")
    assert threading.active_count() == before + 1
    runlock.release(tmp_path / "b")
    assert threading.active_count() == before
