"""Broken and hostile image files stop a run before its first step with the file and row, or are left out, counted
and listed; they never reach a user as a traceback from a DataLoader worker."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import BAD_IMAGES, image_bytes, write_manifest
from PIL import Image

from lossguided.cli import main
from lossguided.data import datasets
from lossguided.data.datasets import ImageFileDataset, check_images, one_line_worker_error, write_bad_images
from lossguided.data.decode import decode_image, verify_image
from lossguided.data.manifest import DataError, read_csv

CASES = list(BAD_IMAGES.items())


@pytest.mark.parametrize(("case", "bad"), CASES, ids=[c for c, _ in CASES])
def test_bad_image_stops_with_file_and_row(tmp_path, case, bad):
    name, data, why = bad
    csv_path, row = write_manifest(tmp_path, (name, data))
    with pytest.raises(DataError) as e:
        check_images(read_csv(csv_path))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"train.csv: row {row}: " in msg and name in msg and why in msg, msg


@pytest.mark.parametrize(("case", "bad"), CASES, ids=[c for c, _ in CASES])
def test_bad_image_is_left_out_counted_and_listed(tmp_path, case, bad):
    name, data, why = bad
    csv_path, row = write_manifest(tmp_path, (name, data))
    manifest = read_csv(csv_path)
    kept, skipped = check_images(manifest, skip_bad=True)
    assert len(kept) == len(manifest) - 1 and [b.row for b in skipped] == [row]
    write_bad_images(tmp_path / "bad_images.csv", skipped)
    with open(tmp_path / "bad_images.csv", newline="") as f:
        (listed,) = list(csv.DictReader(f))
    assert listed["source_row"] == str(row) and listed["path"].endswith(name) and why in listed["error"]


@pytest.mark.parametrize(("case", "bad"), CASES, ids=[c for c, _ in CASES])
def test_train_command_stops_before_the_first_step(tmp_path, capsys, case, bad):
    name, data, _ = bad
    csv_path, row = write_manifest(tmp_path, bad)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--train",
            str(csv_path),
            "--model",
            "test_resnet",
            "--no-pretrained",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"row {row}" in err and name in err, err
    assert not (out / "last.pt").exists()


def test_a_bomb_in_a_dataset_is_one_data_error(tmp_path):
    name, data, _ = BAD_IMAGES["decompression bomb"]
    csv_path, _ = write_manifest(tmp_path, (name, data))
    ds = ImageFileDataset(read_csv(csv_path), image_size=16)
    with pytest.raises(DataError, match="DecompressionBombError"):
        for i in range(len(ds)):
            ds[i]


def test_a_worker_error_reaches_the_user_as_one_line(tmp_path):
    name, data, _ = BAD_IMAGES["png cut in half"]
    csv_path, _ = write_manifest(tmp_path, (name, data), good=2)
    loader = torch.utils.data.DataLoader(ImageFileDataset(read_csv(csv_path), image_size=16), num_workers=1)
    with pytest.raises(DataError) as e:
        list(loader)
    line = str(e.value)  # torch re-raises it with the worker's traceback as the message; only our line is kept
    assert "\n" not in line and name in line and "cannot decode image" in line, line
    wrapped = DataError(
        f"Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\n{DataError.__module__}"
        f".DataError: {line}"
    )
    assert str(one_line_worker_error(wrapped)) == line  # any other DataError from a worker, in the trainer


def test_the_check_runs_in_parallel_and_is_remembered(tmp_path, monkeypatch):
    name, data, _ = BAD_IMAGES["jpeg zeroed inside"]
    csv_path, row = write_manifest(tmp_path, (name, data), good=140)  # enough for worker processes
    manifest = read_csv(csv_path)
    kept, skipped = check_images(manifest, skip_bad=True, workers=2)
    assert [b.row for b in skipped] == [row] and len(kept) == 140

    def no_decoding(paths, workers):
        raise AssertionError("decoded again")

    monkeypatch.setattr(datasets, "_verify_all", no_decoding)
    assert [b.row for b in check_images(manifest, skip_bad=True)[1]] == [row]  # from the remembered check
    (tmp_path / "img" / name).write_bytes(Image.open(tmp_path / "img" / "0.png").tobytes()[:10])  # changed file
    with pytest.raises(AssertionError, match="decoded again"):
        check_images(manifest, skip_bad=True)


def test_in_memory_data_needs_no_check():
    from lossguided.data.manifest import ClassMap, Manifest
    from lossguided.data.storage import Storage

    m = Manifest(
        ids=np.arange(3),
        labels=np.zeros(3),
        classes=ClassMap(("a",)),
        source="mem",
        storage=Storage.arrays(np.zeros((3, 8, 8), np.uint8)),
    )
    assert check_images(m) == (m, [])


def test_16_bit_png_keeps_its_grey_levels(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    x = decode_image(tmp_path / "deep.png", 32)
    assert torch.equal(x[0], torch.from_numpy((ramp >> 8).astype(np.uint8)))  # not clipped to white
    assert verify_image(tmp_path / "deep.png") is None


def test_sound_files_pass(tmp_path):
    csv_path, _ = write_manifest(tmp_path)
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16)).save(buf, format="JPEG")
    (tmp_path / "img" / "cmyk.jpg").write_bytes(buf.getvalue())
    assert verify_image(tmp_path / "img" / "cmyk.jpg") is None
    jfif = bytearray(image_bytes("JPEG"))
    at = jfif.index(b"JFIF\0") + 5
    jfif[at] = 2  # JFIF 2.01: libjpeg warns "unknown JFIF revision", which is harmless
    (tmp_path / "img" / "jfif2.jpg").write_bytes(bytes(jfif))
    assert verify_image(tmp_path / "img" / "jfif2.jpg") is None
    manifest = read_csv(csv_path)
    assert check_images(manifest) == (manifest, [])


@pytest.mark.parametrize("case", ["decompression bomb", "png cut in half", "jpeg zeroed inside"])
def test_evaluate_command_gives_one_line(tmp_path, capsys, case):
    from lossguided.engine import checkpoint
    from lossguided.models import create_model

    name, data, _ = BAD_IMAGES[case]
    csv_path, row = write_manifest(tmp_path, (name, data))
    state = {
        "model": create_model("test_resnet", num_classes=2).state_dict(),
        "classes": ["a", "b"],
        "model_name": "test_resnet",
    }
    checkpoint.save(tmp_path / "best.pt", state)
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "--test", str(csv_path), "--image-size", "16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and name in err, err


def test_a_run_skips_bad_images_in_every_split(tmp_path):
    from lossguided.data.datasets import check_all

    name, data, _ = BAD_IMAGES["jpeg cut in half"]
    train_csv, row = write_manifest(tmp_path / "train", (name, data))
    val_csv, _ = write_manifest(tmp_path / "val", (name, data))
    (train, val, test), bad = check_all([read_csv(train_csv), read_csv(val_csv), None], skip_bad=True)
    assert (len(train), len(val), test) == (6, 6, None)
    assert [(Path(b.source).parent.name, b.row) for b in bad] == [("train", row), ("val", row)]


@pytest.mark.parametrize(("case", "bad"), CASES, ids=[c for c, _ in CASES])
def test_preprocess_stops_on_a_bad_image_or_leaves_it_out(tmp_path, capsys, case, bad):
    name, _, why = bad
    csv_path, row = write_manifest(tmp_path, bad)
    rc = main(["preprocess", str(csv_path), "--out", str(tmp_path / "pre"), "--image-size", "16", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc != 0 and f"row {row}" in err and name in err and "Traceback" not in err, err
    rc = main(
        [
            "preprocess",
            str(csv_path),
            "--out",
            str(tmp_path / "pre2"),
            "--image-size",
            "16",
            "--workers",
            "0",
            "--skip-bad-images",
        ]
    )
    assert rc == 0
    assert name in (tmp_path / "pre2" / "bad_images.csv").read_text()
