"""The fast input pipeline: the decode path against torchvision's baseline on a real photo, other formats, and the
preprocessed formats (round trip of ids, labels, class map and pixels; bad images; resuming)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from lossguided.cli import main
from lossguided.data import ClassMap, DataError, Manifest, load_manifest, read_csv
from lossguided.data.datasets import check_images
from lossguided.data.decode import decode_image
from lossguided.data.loader import create_loader
from lossguided.data.preprocessed import MemmapDataset, PreprocessedDataset, preprocess, read_preprocessed
from lossguided.data.sources import make_dataset
from lossguided.data.storage import Storage
from lossguided.io import write_json


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image("china.jpg")  # 427 x 640 RGB, a real photo


def baseline(path, size: int) -> np.ndarray:
    """torchvision's ImageFolder path up to the tensor: pil_loader, then Resize((S, S)); uint8 [3,S,S]."""
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    return np.asarray(T.Resize((size, size))(img)).transpose(2, 0, 1)


def mad(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.mark.parametrize("size", [96, 200, 256])  # DCT scale 1/4, 1/2 (with a partial last row), none
def test_decode_matches_the_torchvision_baseline_on_a_real_photo(tmp_path, photo, size):
    path = tmp_path / "china.jpg"
    Image.fromarray(photo).save(path, quality=90)
    ours, ref = decode_image(path, size), baseline(path, size)
    assert ours.shape == (3, size, size) and ours.dtype == torch.uint8
    assert mad(ours, ref) < 2.0  # grey levels of 255 (the DCT scaling is a slightly sharper low-pass)
    assert mad(ours, ref) * 5 < mad(ours.flip(2), ref)  # same orientation: a mirror is far off
    assert mad(ours, ref) * 5 < mad(ours.transpose(1, 2), ref)


def test_exif_orientation_is_ignored_like_the_baseline(tmp_path, photo):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(photo).save(path, quality=90, exif=exif)
    ours, ref = decode_image(path, 128), baseline(path, 128)
    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB").resize((128, 128), Image.BILINEAR))
    assert mad(ours, ref) < 1.5
    assert mad(ours, upright.transpose(2, 0, 1)) > 10 * mad(ours, ref)


def test_png_and_other_modes(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    ours = decode_image(tmp_path / "a.png", 100)
    assert ours.shape == (3, 100, 100) and mad(ours, baseline(tmp_path / "a.png", 100)) < 0.1  # same filter, +-1
    Image.fromarray(photo).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(photo).convert("P").save(tmp_path / "palette.gif")
    for name in ("rgba.png", "palette.gif"):
        assert decode_image(tmp_path / name, 64).shape == (3, 64, 64)
    small = Image.fromarray(photo).resize((40, 30))
    small.save(tmp_path / "small.jpg", quality=95)
    assert mad(decode_image(tmp_path / "small.jpg", 64), baseline(tmp_path / "small.jpg", 64)) < 1.5  # upscaling


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path, photo):
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.jpg", quality=90)
    x = decode_image(tmp_path / "gray.jpg", 64)
    assert x.shape == (3, 64, 64) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert mad(x, baseline(tmp_path / "gray.jpg", 64)) < 1.5


# -- preprocessed formats ---------------------------------------------------------------------------------------
@pytest.fixture
def photo_csv(tmp_path, photo):
    """9 photo crops (JPEG and PNG) with SKU labels and non-contiguous ids."""
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = [["path", "label", "id"]]
    for i in range(9):
        y, x = rng.integers(0, 100), rng.integers(0, 200)
        ext = "png" if i % 4 == 3 else "jpg"
        Image.fromarray(photo[y : y + 300, x : x + 400]).save(tmp_path / "img" / f"{i}.{ext}")
        rows.append([f"img/{i}.{ext}", ["SKU-Z", "SKU-A", "SKU-M"][i % 3], str(1000 - 7 * i)])
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.mark.parametrize("storage", ["memmap", "jpeg-shards"])
def test_preprocess_round_trip_keeps_ids_labels_classes_and_images(tmp_path, photo_csv, storage):
    src = read_csv(photo_csv)
    out = tmp_path / "prep"
    summary = preprocess(src, out, image_size=64, storage=storage, shard_size=4, progress=False)
    assert summary["samples"] == 9 and summary["skipped"] == 0 and summary["bytes_per_image"] > 0
    assert json.loads((out / "manifest.json").read_text())["classes"] == ["SKU-A", "SKU-M", "SKU-Z"]

    m = load_manifest(str(out))  # what --train/--val/--test DIR do
    assert m.storage.kind == "preprocessed" and m.storage.root == str(out)
    np.testing.assert_array_equal(m.ids, src.ids)
    np.testing.assert_array_equal(m.labels, src.labels)
    assert m.classes == src.classes and list(m.paths) == list(src.paths)
    check_images(m)  # a no-op: the folder was checked when written

    ds = make_dataset(m, image_size=64)
    assert isinstance(ds, MemmapDataset if storage == "memmap" else PreprocessedDataset)
    direct = make_dataset(src, image_size=64)
    for i in range(len(src)):
        (x, label, sid), (ref, ref_label, ref_id) = ds[i], direct[i]
        assert (label, sid) == (ref_label, ref_id) and x.shape == (3, 64, 64) and x.dtype == torch.uint8
        if storage == "memmap":
            assert torch.equal(x, ref)
        else:
            assert mad(x, ref) < 6  # JPEG quality 90 of a detailed 64 px image: ~4 grey levels (~2.5 at 256)

    # a subset by id (what the recipe does after selection) and a batch through the training loader
    sub = m.select_ids(np.array([986, 1000]))
    images, labels, ids = next(iter(create_loader(make_dataset(sub, image_size=64), batch_size=8, shuffle=False)))
    assert images.shape == (2, 3, 64, 64) and sorted(ids.tolist()) == [986, 1000]
    assert make_dataset(sub, image_size=32)[0][0].shape == (3, 32, 32)  # another size: resized on the fly

    # another split's class map (the training set's) re-encodes the labels by name
    other = ClassMap(("SKU-Z", "SKU-M", "SKU-A", "SKU-Q"))
    m2 = read_preprocessed(out, classes=other)
    assert [other.names[j] for j in m2.labels] == [src.classes.names[j] for j in src.labels]

    again = preprocess(src, out, image_size=64, storage=storage, shard_size=4, progress=False)
    assert again["samples"] == 9  # complete: nothing redone
    with pytest.raises(DataError, match="other input or settings"):
        preprocess(src, out, image_size=32, storage=storage, shard_size=4, progress=False)


def test_grayscale_in_memory_set_keeps_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    m = Manifest(
        ids=np.arange(5) * 2,
        labels=np.array([0, 1, 0, 1, 1]),
        classes=ClassMap(("0", "1")),
        source="mem",
        storage=Storage.arrays(images),
        true_labels=np.array([0, 1, 1, 1, 1]),
    )
    preprocess(m, tmp_path / "p", image_size=28, storage="memmap", progress=False)
    back = read_preprocessed(tmp_path / "p")
    np.testing.assert_array_equal(back.true_labels, m.true_labels)
    ds = make_dataset(back, image_size=28)
    assert torch.equal(ds[3][0][0], torch.from_numpy(m.images[3]))
    preprocess(m, tmp_path / "j", image_size=28, storage="jpeg-shards", progress=False)
    x = make_dataset(read_preprocessed(tmp_path / "j"), image_size=28)[3][0]
    assert x.shape == (1, 28, 28) and mad(x[0], m.images[3]) < 12  # JPEG of noise: lossy, but the same image


def test_corrupt_image_names_path_and_id_or_is_skipped_and_listed(tmp_path, photo_csv):
    (tmp_path / "img" / "4.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    src = read_csv(photo_csv)
    with pytest.raises(DataError) as err:
        preprocess(src, tmp_path / "a", image_size=32, storage="jpeg-shards", shard_size=4, progress=False)
    assert "4.jpg" in str(err.value) and "id 972" in str(err.value) and "--skip-bad-images" in str(err.value)

    summary = preprocess(src, tmp_path / "b", image_size=32, storage="memmap", skip_bad_images=True, progress=False)
    assert summary["samples"] == 8 and summary["skipped"] == 1
    with open(tmp_path / "b" / "bad_images.csv") as f:
        bad = list(csv.DictReader(f))
    assert len(bad) == 1 and bad[0]["id"] == "972" and bad[0]["path"].endswith("4.jpg")
    assert bad[0]["path"].startswith("/")  # absolute, as in every CSV the tool writes
    m = load_manifest(str(tmp_path / "b"))
    assert 972 not in m.ids and len(make_dataset(m, image_size=32)) == 8


@pytest.mark.parametrize("storage", ["memmap", "jpeg-shards"])
def test_interrupted_preprocessing_resumes(tmp_path, photo_csv, storage):
    good = (tmp_path / "img" / "5.jpg").read_bytes()
    (tmp_path / "img" / "5.jpg").write_bytes(b"broken")  # in the second shard of 4
    src = read_csv(photo_csv)
    out = tmp_path / "prep"
    with pytest.raises(DataError):
        preprocess(src, out, image_size=32, storage=storage, shard_size=4, progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="unfinished"):
        load_manifest(str(out))
    with pytest.raises(DataError, match="unfinished write of a preprocessed dataset with other input or settings"):
        preprocess(src, out, image_size=48, storage=storage, shard_size=4, progress=False)
    (tmp_path / "img" / "5.jpg").write_bytes(good)
    summary = preprocess(src, out, image_size=32, storage=storage, shard_size=4, progress=False)
    assert summary["resumed_shards"] == 1 and summary["samples"] == 9
    assert not (out / ".partial").exists()
    m, direct = load_manifest(str(out)), make_dataset(src, image_size=32)
    for i in range(9):  # the shard kept from the first run and the ones written on resuming
        assert mad(make_dataset(m, image_size=32)[i][0], direct[i][0]) < (0.01 if storage == "memmap" else 6)


def test_cli_preprocess_then_train_and_evaluate_from_the_folder(tmp_path, image_csv, capsys):
    out = tmp_path / "prep"
    assert main(["preprocess", str(image_csv), "--out", str(out), "--image-size", "16", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 24
    tiny = ["--model", "test_resnet", "--no-pretrained", "--image-size", "16", "--batch-size", "8", "--workers", "0"]
    assert (
        main(["train", "--train", str(out), "--val", str(out), "--out", str(tmp_path / "run"), "--epochs", "1", *tiny])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--test", str(out)]) == 0
    assert set(json.loads(capsys.readouterr().out)["per_class_error"]) == {"SKU-A", "SKU-B", "SKU-C"}


def test_a_writer_claims_only_a_new_empty_or_its_own_folder(tmp_path):
    """The one rule both writers (preprocessed, WebDataset) resume by."""
    from lossguided.data.encode import claim_output_folder

    out, settings = tmp_path / "out", {"image_size": 32, "fingerprint": "abc"}
    kw = {"done": out / "done.json", "plan": out / "plan.json", "what": "test output"}
    assert claim_output_folder(out, settings, **kw) is None  # new: the plan is written
    assert json.loads((out / "plan.json").read_text()) == settings
    write_json(out / "plan.json", settings | {"shards": {"0": "x"}})  # the writer's progress rides along
    assert claim_output_folder(out, settings, **kw) is None  # the same write, resumed
    with pytest.raises(DataError, match="unfinished write of test output with other input or settings"):
        claim_output_folder(out, settings | {"image_size": 64}, **kw)
    write_json(out / "done.json", settings | {"summary": 1})
    assert claim_output_folder(out, settings, **kw)["summary"] == 1
    with pytest.raises(DataError, match="holds test output of other input or settings"):
        claim_output_folder(out, settings | {"fingerprint": "def"}, **kw)
    (out / "done.json").write_text("{not json")
    with pytest.raises(DataError, match="done.json: damaged"):
        claim_output_folder(out, settings, **kw)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and not test output"):
        claim_output_folder(other, settings, done=other / "done.json", plan=other / "plan.json", what="test output")
