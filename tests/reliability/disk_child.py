"""Run by test_disk_full.py in a fresh interpreter: each case writes under a small file size limit (RLIMIT_FSIZE,
SIGXFSZ ignored, so a write past it fails with EFBIG like a full disk with ENOSPC) and prints one JSON line: the
error's type and message, and whether the files from before are unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import resource
import signal
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hostile import write_manifest  # noqa: E402

from lossguided.cli import main  # noqa: E402
from lossguided.data.manifest import ClassMap, Manifest  # noqa: E402
from lossguided.data.preprocessed import preprocess  # noqa: E402
from lossguided.data.storage import Storage  # noqa: E402
from lossguided.engine import checkpoint  # noqa: E402
from lossguided.ensemble.store import FeatureWriter  # noqa: E402
from lossguided.io import append_jsonl, write_npz, write_text  # noqa: E402

UNLIMITED = resource.getrlimit(resource.RLIMIT_FSIZE)[1]


def limit(nbytes: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (UNLIMITED if nbytes is None else nbytes, UNLIMITED))


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def manifest(n: int = 32) -> Manifest:
    rng = np.random.default_rng(0)
    return Manifest(
        ids=np.arange(n),
        labels=np.arange(n) % 2,
        classes=ClassMap(("a", "b")),
        source="mem",
        storage=Storage.arrays((rng.random((n, 64, 64)) * 255).astype(np.uint8)),
    )


def train_epoch_two(d: Path) -> None:
    """Epoch 1 with room; epoch 2 where best.pt fits under the limit but last.pt (with the optimizer) does not."""
    csv_path, _ = write_manifest(d / "data")
    argv = [
        "train",
        "--train",
        str(csv_path),
        "--model",
        "test_resnet",
        "--no-pretrained",
        "--image-size",
        "16",
        "--out",
        str(d / "run"),
        "--patience",
        "5",
    ]
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([*argv, "--epochs", "1"]) == 0
    best, last = (d / "run" / "best.pt").stat().st_size, (d / "run" / "last.pt").stat().st_size
    run = ("best.pt", "last.pt", "metrics.jsonl")  # config.yaml says epochs 2 now: `train` writes it first
    before = {k: v for k, v in digest(d / "run").items() if k in run}
    limit((best + last) // 2)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([*argv, "--epochs", "2"])
    limit(None)
    after = {k: v for k, v in digest(d / "run").items() if k in run}
    raise SystemExit(json.dumps({"rc": rc, "stderr": err.getvalue(), "kept": before == after and len(after) == 3}))


CASES = {
    "write_text": lambda d: write_text(d / "f.txt", "x" * 2_000_000),
    "write_npz": lambda d: write_npz(d / "f.npz", a=np.zeros(500_000, np.float32)),
    "append_jsonl": lambda d: [append_jsonl(d / "f.jsonl", {"x": "y" * 1000}) for _ in range(2000)],
    "checkpoint.save": lambda d: checkpoint.save(d / "f.pt", {"model": {"w": torch.zeros(500_000)}, "classes": []}),
    "preprocess memmap": lambda d: preprocess(manifest(), d / "pre", image_size=64, storage="memmap", progress=False),
    "preprocess jpeg-shards": lambda d: preprocess(manifest(), d / "pre", image_size=64, progress=False),
    "features": lambda d: FeatureWriter.create(
        d / "feat", n_rows=200_000, weight=np.zeros((2, 8)), bias=np.zeros(2), classes=["a", "b"]
    ),
    "train epoch 2": train_epoch_two,
}


def run(case: str, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "f.txt").write_text("old")
    before = digest(folder)
    limit(100_000 if case != "train epoch 2" else None)
    try:
        CASES[case](folder)
        out = {"error": None}
    except SystemExit as e:
        out = json.loads(str(e))
    except BaseException as e:  # noqa: BLE001 - the test reports any type
        out = {"error": type(e).__name__, "message": str(e)}
    finally:
        limit(None)
    out.setdefault("kept", all(digest(folder).get(k) == v for k, v in before.items()))
    return out


if __name__ == "__main__":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    root = Path(sys.argv[1])
    for case in CASES:
        print(json.dumps({"case": case, **run(case, root / case.replace(" ", "_"))}), flush=True)
