"""Crash safety with a real process: `lossguided train` is SIGKILLed mid-run (no handler, no `finally` runs), the
same command is started again, and the result must be the uninterrupted run's, bit for bit on CPU."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lossguided.cli import main
from lossguided.engine import checkpoint

EPOCHS = 15
TIMING = ("images_per_s", "epoch_time_s")  # wall-clock measurements: the only fields two runs may differ in


def _args(csv, out):
    return [
        "train",
        "--train",
        str(csv),
        "--val",
        str(csv),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--model",
        "test_resnet",
        "--no-pretrained",
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--flip",
        "--seed",
        "7",
        "--workers",
        "0",
    ]


def _start(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lossguided", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _reference(tmp_path, image_csv, capsys):
    """The uninterrupted run, in this process with the subprocess's thread count (float sums depend on it)."""
    ref = tmp_path / "reference"
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # what the CLI's thread choice honours, as the subprocess had it
    try:
        assert main(_args(image_csv, ref)) == 0
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
    capsys.readouterr()
    return ref


def _metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def _saved_inside_an_epoch(path) -> bool:
    try:
        state = checkpoint.load(path)
    except Exception:  # not there yet
        return False
    return state["epoch"] >= 2 and state.get("mid_epoch") is not None


@pytest.mark.parametrize("save_every", [None, 2], ids=["epoch-checkpoints", "mid-epoch-checkpoints"])
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path, image_csv, capsys, save_every):
    out = tmp_path / "killed"
    extra = [] if save_every is None else ["--save-every-steps", str(save_every)]
    proc = _start([*_args(image_csv, out), *extra])
    try:
        deadline = time.monotonic() + 180
        metrics = out / "metrics.jsonl"
        # two epochs saved (last.pt, then its metrics line): the process is now inside epoch 3; with mid-epoch
        # checkpoints, wait for one written inside an epoch
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2) or (
            save_every and not _saved_inside_an_epoch(out / "last.pt")
        ):
            assert proc.poll() is None, f"run ended before the kill: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(out / "last.pt")["epoch"]
    assert 2 <= killed_at < EPOCHS, f"killed after epoch {killed_at}: the run should still have been going"
    # what a kill inside checkpoint.save leaves behind (atomic_path's temporary file, never renamed)
    (out / ".last.pt.k1ll3d_x.tmp").write_bytes(b"half a checkpoint")

    rerun = _start([*_args(image_csv, out), *extra])
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["resumed_from_epoch"] == killed_at and result["epochs"] == EPOCHS
    assert f"resumed from {out / 'last.pt'} at epoch {killed_at}" in stderr
    assert sorted(p.name for p in out.glob(".*.tmp")) == []

    ref = _reference(tmp_path, image_csv, capsys)

    assert _metrics(out / "metrics.jsonl") == _metrics(ref / "metrics.jsonl")
    assert [r["epoch"] for r in _metrics(out / "metrics.jsonl")] == list(range(1, EPOCHS + 1))
    for name in ("last.pt", "best.pt"):
        got, want = checkpoint.load(out / name), checkpoint.load(ref / name)
        assert got["epoch"] == want["epoch"] and got["best_val_error"] == want["best_val_error"], name
        for k, v in want["model"].items():
            torch.testing.assert_close(got["model"][k], v, rtol=0, atol=0, msg=f"{name}: {k}")


def test_metrics_file_is_rebuilt_from_the_checkpoint_on_resume(tmp_path, image_csv, capsys):
    """A kill between last.pt and its metrics line (or inside the line) must not leave metrics.jsonl short or
    broken: the checkpoint holds the history and the rerun rewrites the file from it."""
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    args = _args(image_csv, out)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    damages = {"never written": lambda lines: lines[:-1], "cut short": lambda lines: [*lines[:-1], lines[-1][:17]]}
    for epochs, damage in zip((2, 3), damages.values(), strict=True):
        lines = metrics.read_text().splitlines()
        metrics.write_text("".join(x + "\n" for x in damage(lines)))  # the last epoch's line, as a kill leaves it
        args[args.index("--epochs") + 1] = str(epochs)
        capsys.readouterr()
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from_epoch"] == epochs - 1
        now = metrics.read_text().splitlines()
        assert now[:-1] == lines and [json.loads(x)["epoch"] for x in now] == list(range(1, epochs + 1))


def test_sigterm_saves_at_the_next_step_and_a_rerun_equals_an_uninterrupted_run(tmp_path, image_csv, capsys):
    """A preempted job (SIGTERM) writes last.pt at the next step boundary, ends with one line and exit code 143,
    and its rerun finishes as if it had never stopped."""
    out = tmp_path / "preempted"
    proc = _start(_args(image_csv, out))
    try:
        deadline = time.monotonic() + 180
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None, f"run ended before the signal: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no epoch within 180 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, stderr[-2000:]
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1]
    assert "stopped by SIGTERM" in last and "rerun the same command to resume" in last
    state = checkpoint.load(out / "last.pt")
    assert state["epoch"] < EPOCHS
    rerun = _start(_args(image_csv, out))
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]

    ref = _reference(tmp_path, image_csv, capsys)
    assert _metrics(out / "metrics.jsonl") == _metrics(ref / "metrics.jsonl")
    got, want = checkpoint.load(out / "last.pt"), checkpoint.load(ref / "last.pt")
    for k, v in want["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=0, msg=k)
