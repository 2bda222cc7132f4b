"""`torchrun --nproc_per_node 2 -m lossguided ...` on CPU (gloo) with a tiny timm model and 25 images, a count two
ranks do not divide (DistributedSampler pads one shard with a repeat that must not be counted twice).

Two launches (each ~10 s, most of it imports): a 2-process `train` (DDP, 1 epoch), then a 2-process `losses --lr 0`
from its checkpoint, compared with the same recording in one process; the 2-process checkpoint is evaluated in one
process too. Three more launches (~30 s) kill a 2-process run inside an epoch, rerun it and compare it with an
uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image

from lossguided.cli import main
from lossguided.engine import checkpoint
from lossguided.losstable import LossTable

pytestmark = [
    pytest.mark.dist,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="this torch build has no torch.distributed with the gloo backend",
    ),
]

N = 25
TINY = ["--image-size", "16", "--workers", "0"]


def torchrun(args: list[str], timeout: float = 300) -> tuple[str, str]:
    """Run `lossguided ARGS` under torchrun with 2 CPU processes; (stdout, stderr) of the launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "lossguided",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # ranks out of step hang in a collective
        proc.send_signal(signal.SIGTERM)  # torchrun stops its workers (they run in sessions of their own)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"torchrun {args[0]} did not finish in {timeout} s (ranks out of step?):\n{err[-3000:]}")
    assert proc.returncode == 0, f"torchrun {args[0]} failed:\n{err[-4000:]}"
    return out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """25 small PNGs in 3 classes with a class colour; ids are the row numbers."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    (root / "img").mkdir()
    for i in range(N):
        arr = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        arr[..., i % 3] = 200
        Image.fromarray(arr).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,c{i % 3}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(data) -> tuple[Path, str, str]:
    """A 2-process DDP `train` run of 1 epoch (with validation, so evaluation is sharded and gathered too)."""
    out = data / "train2"
    csv = str(data / "train.csv")
    stdout, stderr = torchrun(
        [
            "train",
            "--train",
            csv,
            "--val",
            csv,
            "--out",
            str(out),
            "--epochs",
            "1",
            "--model",
            "test_resnet",
            "--no-pretrained",
            "--batch-size",
            "5",
            "--lr",
            "1e-3",
            "--flip",
            *TINY,
        ]
    )
    return out, stdout, stderr


def test_two_process_train_writes_once_and_its_checkpoint_evaluates_in_one_process(data, trained, capsys):
    out, stdout, stderr = trained
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"only rank 0 prints its result: {lines}"
    assert json.loads(lines[0])["epochs"] == 1
    assert stderr.count("epoch=1 train_loss=") == 1  # and only rank 0 logs
    files = sorted(p.name for p in out.iterdir() if p.name != "tb")  # tb/: TensorBoard, where it is installed
    assert files == [".lock", "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "summary.csv"]  # rank 0's
    assert len(list((out / "tb").glob("events.*"))) <= 1
    assert (out / ".lock").read_text() == ""  # released on a clean exit
    (record,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    state = checkpoint.load(out / "last.pt")
    assert state["epoch"] == 1 and state["step"] == 3  # ceil(13 / 5) steps per rank, not ceil(25 / 5)
    assert len(state["rng_ranks"]) == 2 and not any(k.startswith("module.") for k in state["model"])

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--test", str(data / "train.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # the same number as the 2-process validation: every rank evaluated rank 0's weights and BN statistics
    assert metrics["mean_top1_error"] == pytest.approx(record["val_mean_top1_error"], abs=1e-12)
    assert metrics["top1_error"] == pytest.approx(record["val_top1_error"], abs=1e-12)


def test_two_process_recording_holds_every_id_once_and_equals_one_process(data, trained, capsys):
    ckpt, csv = str(trained[0] / "last.pt"), str(data / "train.csv")
    two, one = data / "rec2" / "losses.npz", data / "rec1" / "losses.npz"
    # mid-epoch checkpoints gather both ranks
    stdout, _ = torchrun(
        [
            "losses",
            "--checkpoint",
            ckpt,
            "--train",
            csv,
            "--out",
            str(two),
            "--lr",
            "0",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--set",
            "pretrain.save_every_steps=1",
        ]
    )
    assert json.loads(stdout.strip())["samples"] == N
    capsys.readouterr()
    assert (
        main(
            [
                "losses",
                "--checkpoint",
                ckpt,
                "--train",
                csv,
                "--out",
                str(one),
                "--lr",
                "0",
                "--batch-size",
                "4",
                "--workers",
                "0",
            ]
        )
        == 0
    )

    t2, t1 = LossTable.load(two), LossTable.load(one)
    assert t2.ids.tolist() == list(range(N))  # every id exactly once, the padded repeat folded away
    assert np.all(t2.n_records == 1)
    assert np.array_equal(t1.ids, t2.ids) and np.array_equal(t1.labels, t2.labels)
    np.testing.assert_allclose(t2.losses, t1.losses, rtol=1e-4, atol=1e-5)
    assert np.array_equal(t2.preds, t1.preds)
    assert [p.name for p in (data / "rec2").glob(".*.tmp")] == []


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def test_two_process_run_killed_inside_an_epoch_resumes_exactly(data):
    """SIGKILL the whole 2-process job right after a mid-epoch checkpoint, rerun it: every rank continues inside
    the epoch (its own generators and running loss) and the result equals an uninterrupted 2-process run."""
    csv = str(data / "train.csv")

    def args(out):
        return [
            "train",
            "--train",
            csv,
            "--out",
            str(out),
            "--epochs",
            "30",
            "--model",
            "test_resnet",
            "--no-pretrained",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
            "--flip",
            "--save-every-steps",
            "1",
            *TINY,
        ]

    killed = data / "killed2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "lossguided"]
    proc = subprocess.Popen(
        [*cmd, *args(killed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                state = checkpoint.load(killed / "last.pt")
            except Exception:  # not written yet
                state = None
            if state is not None and state["epoch"] >= 1 and state.get("mid_epoch"):
                break
            assert proc.poll() is None, f"run ended before the kill: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 240 s"
            time.sleep(0.01)
        for pid in [proc.pid, *_descendants(proc.pid)]:  # the launcher and both ranks (own sessions), no warning
            os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    saved = checkpoint.load(killed / "last.pt")
    assert saved["epoch"] < 30, "the job finished before the kill"

    _, stderr = torchrun(args(killed))
    # 5 of every 6 checkpoints are written inside an epoch; when the kill came after one, the rerun continued there
    assert (" batches (step " in stderr) == (saved.get("mid_epoch") is not None)
    ref = data / "reference2"
    torchrun(args(ref))
    timing = ("images_per_s", "epoch_time_s")
    lines = [
        [
            {k: v for k, v in json.loads(x).items() if k not in timing}
            for x in (d / "metrics.jsonl").read_text().splitlines()
        ]
        for d in (killed, ref)
    ]
    assert lines[0] == lines[1] and len(lines[0]) == 30
    got, want = checkpoint.load(killed / "last.pt"), checkpoint.load(ref / "last.pt")
    for k, v in want["model"].items():
        assert np.array_equal(got["model"][k].numpy(), v.numpy()), k
