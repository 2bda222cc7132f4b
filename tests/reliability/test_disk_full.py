"""A full disk is one line naming the file ('no space left on ...'), nothing written before is lost, best.pt,
last.pt and metrics.jsonl stay in step, and nothing dies by SIGBUS. One child process runs every case under a file
size limit (EFBIG stands in for ENOSPC), so the suite pays for one interpreter."""

from __future__ import annotations

import json

import pytest
from hostile import REPO, run_python

from lossguided import disk
from lossguided.engine import checkpoint

CASES = [
    "write_text",
    "write_npz",
    "append_jsonl",
    "checkpoint.save",
    "preprocess memmap",
    "preprocess jpeg-shards",
    "features",
    "train epoch 2",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("disk")
    child = REPO / "tests" / "reliability" / "disk_child.py"
    proc = run_python(
        f"import runpy, sys; sys.argv = ['', {str(folder)!r}]; runpy.run_path({str(child)!r}, run_name='__main__')",
        env={"LOSSGUIDED_CACHE": str(folder / "cache")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # a SIGBUS would be -7
    return {r["case"]: r for r in map(json.loads, (x for x in proc.stdout.splitlines() if x.startswith('{"case"')))}


@pytest.mark.parametrize("case", CASES)
def test_full_disk_is_one_line_and_keeps_what_was_there(results, case):
    r = results[case]
    assert r["kept"], r
    if case == "train epoch 2":
        errors = [x for x in r["stderr"].splitlines() if x.startswith("lossguided train: error:")]
        assert r["rc"] == 2 and len(errors) == 1 and "no space left on" in errors[0], r
        assert "Traceback" not in r["stderr"], r
        return
    assert r["error"] == "DiskFullError" and r["message"].startswith("no space left on "), r
    assert "\n" not in r["message"]


def test_checkpoint_space_is_checked_before_the_first_byte(tmp_path, monkeypatch):
    checkpoint.save(tmp_path / "last.pt", {"model": {}, "classes": ["a"]})
    before = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(disk, "free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(disk.DiskFullError, match=r"no space left on .*: 10\.0 MiB free, .* needed"):
        checkpoint.save(tmp_path / "last.pt", {"model": {"w": checkpoint.torch.zeros(2**20)}, "classes": ["a"]})
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_training_without_room_for_its_checkpoints_stops_before_the_first_epoch(tmp_path, monkeypatch):
    import numpy as np

    from lossguided.config import TrainConfig
    from lossguided.data.manifest import ClassMap, Manifest
    from lossguided.data.sources import make_dataset
    from lossguided.data.storage import Storage
    from lossguided.engine.trainer import Trainer
    from lossguided.models import create_model

    classes = ClassMap(("a", "b"))
    m = Manifest(
        ids=np.arange(8),
        labels=np.arange(8) % 2,
        classes=classes,
        source="mem",
        storage=Storage.arrays(np.zeros((8, 16, 16), np.uint8)),
    )
    trainer = Trainer(
        create_model("test_resnet", num_classes=2),
        make_dataset(m, image_size=16),
        classes=classes,
        cfg=TrainConfig(epochs=1, batch_size=4),
        out_dir=tmp_path,
    )
    trainer.train_epoch = lambda: pytest.fail("an epoch ran on a disk without room for its checkpoints")
    monkeypatch.setattr(disk, "free_bytes", lambda path: 2**20)
    with pytest.raises(disk.DiskFullError, match="1.0 MiB free"):
        trainer.fit()
    assert not (tmp_path / "last.pt").exists()


UNWRITABLE = {  # case -> (make it, the folder to write into)
    "a file where the folder should be": (lambda d: (d / "file").write_text("x"), lambda d: d / "file" / "run"),
    "a folder where the file should be": (lambda d: (d / "run" / "f.txt").mkdir(parents=True), lambda d: d / "run"),
}


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_an_unwritable_destination_is_one_line(tmp_path, case):
    from lossguided import runlock
    from lossguided.config import ConfigError
    from lossguided.io import write_text

    make, folder = UNWRITABLE[case]
    make(tmp_path)
    with pytest.raises(disk.WriteError, match=r"^cannot write .*f\.txt: "):
        write_text(folder(tmp_path) / "f.txt", "x")
    if case.startswith("a file"):
        with pytest.raises(ConfigError, match="cannot use as a run folder"):
            runlock.acquire(folder(tmp_path))
