"""Image sources: every registered source against one contract (a manifest for a split, a dataset at an image size,
one image by id), and the WebDataset source end to end (written by preprocess, read back by id and by offset,
trained from)."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from lossguided.cli import main
from lossguided.data import ClassMap, DataError, load_manifest, read_csv
from lossguided.data import webdataset as wds
from lossguided.data.preprocessed import preprocess
from lossguided.data.sources import (
    default_split_spec,
    get_source,
    image_of,
    list_sources,
    make_dataset,
    source_for,
    source_of,
)
from lossguided.data.webdataset import expand_braces, read_webdataset
from lossguided.data.webdataset_writer import write_webdataset

SIZE = 16


def _image_folder(tmp_path, image_csv):
    root = tmp_path / "folder"
    for i, row in enumerate(image_csv.read_text().splitlines()[1:]):
        path, label = row.split(",")
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i}.png").write_bytes((image_csv.parent / path).read_bytes())
    return str(root)


def _preprocessed(tmp_path, image_csv):
    preprocess(read_csv(image_csv), tmp_path / "prep", image_size=SIZE, storage="memmap", progress=False)
    return str(tmp_path / "prep")


def _webdataset(tmp_path, image_csv):
    write_webdataset(read_csv(image_csv), tmp_path / "wds", image_size=SIZE, shard_size=10, progress=False)
    return str(tmp_path / "wds")


SPECS = {  # how a test makes each registered source's input: a new source adds one line here
    "fashion-mnist": lambda tmp_path, image_csv: "fashion-mnist:val",
    "webdataset": _webdataset,
    "preprocessed": _preprocessed,
    "image-folder": _image_folder,
    "csv": lambda tmp_path, image_csv: str(image_csv),
}


def test_every_registered_source_is_under_the_contract():
    assert set(list_sources()) == set(SPECS)
    assert list_sources("*data*") == ["webdataset"]
    with pytest.raises(ValueError, match="unknown image source 'lmdb'; one of"):
        get_source("lmdb")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.fashion_mnist) if n == "fashion-mnist" else n for n in SPECS]
)
def test_source_contract(tmp_path, image_csv, name):
    spec = SPECS[name](tmp_path, image_csv)
    assert source_for(spec).name == name
    m = load_manifest(spec, split="val")
    assert len(m) > 0 and m.ids.dtype == np.int64 and len(np.unique(m.ids)) == len(m)
    assert isinstance(m.classes, ClassMap) and 0 <= m.labels.min() and m.labels.max() < len(m.classes)
    assert source_of(m).name == get_source(name).name or {source_of(m).name, name} == {"image-folder", "csv"}

    ds = make_dataset(m, image_size=SIZE)
    assert len(ds) == len(m)
    for i in (0, len(m) - 1):
        x, label, sid = ds[i]
        assert x.dtype == torch.uint8 and x.shape[0] in (1, 3) and tuple(x.shape[1:]) == (SIZE, SIZE)
        assert (int(label), int(sid)) == (int(m.labels[i]), int(m.ids[i]))

    sub = m.select_ids(m.ids[-2:])  # a subset by id (what the recipe trains on after selection) keeps its source
    x, _, sid = make_dataset(sub, image_size=SIZE * 2)[1]
    assert tuple(x.shape[1:]) == (SIZE * 2, SIZE * 2) and int(sid) == int(m.ids[-1])

    img = image_of(m, int(m.ids[-1]))  # a thumbnail's pixels, at the stored size
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim in (2, 3) and min(img.shape[:2]) > 1

    other = ClassMap(tuple(reversed(m.classes.names)))  # another split's class map re-encodes by name
    again = load_manifest(spec, split="val", classes=other)
    assert [other.names[j] for j in again.labels] == [m.classes.names[j] for j in m.labels]


def test_only_the_built_in_benchmark_brings_its_own_val_and_test(tmp_path, image_csv):
    assert default_split_spec("fashion-mnist", "val") == "fashion-mnist"
    assert default_split_spec(str(image_csv), "val") is None and default_split_spec(str(tmp_path), "test") is None


def test_unknown_input_names_the_choices(tmp_path):
    with pytest.raises(DataError, match="WebDataset .tar shards"):
        load_manifest(str(tmp_path / "nothing" / "here"))


# -- WebDataset -------------------------------------------------------------------------------------------------
def test_expand_braces():
    assert expand_braces("s/train-{000008..000010}.tar") == [f"s/train-{i:06d}.tar" for i in (8, 9, 10)]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    with pytest.raises(DataError, match="empty range"):
        expand_braces("x-{3..1}.tar")


def test_webdataset_round_trip_keeps_ids_labels_classes_and_pixels(tmp_path, image_csv):
    src = read_csv(image_csv).subset(np.arange(1, 24, 2))  # 12 samples, ids 1, 3, ..., 23
    out = tmp_path / "wds"
    summary = write_webdataset(src, out, image_size=SIZE, shard_size=5, progress=False)
    assert summary["shards"] == 3 and summary["samples"] == 12 and summary["skipped"] == 0
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all((out / f".{s}.idx.npz").is_file() for s in shards)  # the offsets index, written with each shard
    with tarfile.open(out / shards[0]) as tar:  # what any WebDataset reader sees
        assert tar.getnames()[:3] == ["000000001.jpg", "000000001.cls", "000000001.json"]
        assert json.loads(tar.extractfile("000000001.json").read())["label"] == "SKU-A"

    for spec in (str(out), str(out / "shard-{000000..000002}.tar")):  # a folder, or a brace pattern
        m = load_manifest(spec)
        np.testing.assert_array_equal(m.ids, src.ids)
        np.testing.assert_array_equal(m.labels, src.labels)
        assert m.classes == src.classes and m.paths[0] == f"{out / shards[0]}#000000001"
    preprocess(src, tmp_path / "prep", image_size=SIZE, storage="jpeg-shards", progress=False)
    ref_ds, ds = make_dataset(load_manifest(str(tmp_path / "prep")), image_size=SIZE), make_dataset(m, image_size=SIZE)
    for i in range(len(src)):
        (x, label, sid), (ref, ref_label, ref_id) = ds[i], ref_ds[i]
        assert (int(label), int(sid)) == (int(ref_label), int(ref_id))
        assert torch.equal(x, ref)  # the same JPEG bytes as the jpeg-shards format, read by offset

    one = load_manifest(str(out / shards[1]))  # one shard alone
    assert one.ids.tolist() == [11, 13, 15, 17, 19]
    assert write_webdataset(src, out, image_size=SIZE, shard_size=5, progress=False) == summary  # complete: no-op
    with pytest.raises(DataError, match="other input or settings"):
        write_webdataset(src, out, image_size=SIZE * 2, shard_size=5, progress=False)


def test_an_interrupted_webdataset_write_resumes_with_the_missing_shards_only(tmp_path, image_csv):
    """A bad image in the third shard stops the write after two finished shards; once it is fixed, the same
    command writes only the missing shards, and the result is byte for byte a fresh write."""
    src = read_csv(image_csv).subset(np.arange(12))
    victim = tmp_path / src.paths[11]
    good = victim.read_bytes()
    victim.write_bytes(b"not an image")
    out = tmp_path / "wds"
    with pytest.raises(DataError, match="pass --skip-bad-images"):
        write_webdataset(src, out, image_size=SIZE, shard_size=5, progress=False)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert sorted(first) == ["shard-000000.tar", "shard-000001.tar"] and not (out / "webdataset.json").exists()

    with pytest.raises(DataError, match="unfinished write of WebDataset shards with other input or settings"):
        write_webdataset(src, out, image_size=SIZE + 1, shard_size=5, progress=False)
    victim.write_bytes(good)
    summary = write_webdataset(src, out, image_size=SIZE, shard_size=5, progress=False)
    assert summary["shards"] == 3 and summary["samples"] == 12
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar") if p.name in first} == first  # kept
    assert not (out / "webdataset.partial.json").exists()
    fresh = tmp_path / "fresh"
    assert write_webdataset(src, fresh, image_size=SIZE, shard_size=5, progress=False)["bytes"] == summary["bytes"]
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    np.testing.assert_array_equal(load_manifest(str(out)).ids, src.ids)


def test_skipped_images_of_finished_shards_are_still_listed_after_a_resume(tmp_path, image_csv):
    src = read_csv(image_csv).subset(np.arange(12))
    (tmp_path / src.paths[1]).write_bytes(b"broken")  # shard 0, skipped
    (tmp_path / src.paths[7]).write_bytes(b"broken")  # shard 1, stops the strict run
    out = tmp_path / "wds"
    with pytest.raises(DataError):
        write_webdataset(src, out, image_size=SIZE, shard_size=5, progress=False, skip_bad_images=False)
    assert not list(out.glob("shard-*.tar"))  # shard 0 had a bad image too: nothing finished, nothing kept wrong
    summary = write_webdataset(src, out, image_size=SIZE, shard_size=5, progress=False, skip_bad_images=True)
    assert summary["skipped"] == 2 and summary["samples"] == 10
    assert (out / "bad_images.csv").read_text().count("\n") == 3  # header + 2


def test_a_selection_csv_of_shard_samples_reads_back_as_train(tmp_path, image_csv):
    """`lossguided select` on a WebDataset run writes `<shard>.tar#<key>` paths; that CSV is a training set: its
    pixels come from the shards (by each shard's offsets index), its ids and labels from the CSV."""
    shards = load_manifest(_webdataset(tmp_path, image_csv))
    keep = np.array([1, 5, 12, 23])  # rows from all three shards
    rows = [f"{int(shards.ids[i])},{shards.paths[i]},{shards.classes.names[shards.labels[i]]}" for i in keep]
    rows[1] = rows[1].replace(str(tmp_path) + "/", "")  # a path relative to the CSV's folder reads too
    (tmp_path / "selected.csv").write_text("id,path,label\n" + "\n".join(rows) + "\n")

    m = load_manifest(str(tmp_path / "selected.csv"))
    assert m.storage.kind == "webdataset" and source_of(m).name == "webdataset"
    np.testing.assert_array_equal(m.ids, shards.ids[keep])
    assert [m.classes.names[j] for j in m.labels] == [shards.classes.names[j] for j in shards.labels[keep]]
    ds, ref = make_dataset(m, image_size=SIZE), make_dataset(shards.subset(keep), image_size=SIZE)
    for i in range(len(keep)):
        assert torch.equal(ds[i][0], ref[i][0]) and int(ds[i][2]) == int(ref[i][2])
    np.testing.assert_array_equal(image_of(m, int(m.ids[2])), image_of(shards, int(m.ids[2])))
    assert torch.equal(make_dataset(m.select_ids(m.ids[-1:]), image_size=SIZE)[0][0], ds[3][0])

    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,path,label\n{rows[0]}\n99,{shards.paths[0].rsplit('#', 1)[0]}#nokey,SKU-A\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3: .*shard-000000\.tar#nokey: .*no sample with key 'nokey'"):
        load_manifest(str(bad))
    bad.write_text(f"id,path,label\n{rows[0]}\n99,{image_csv.parent / 'img' / '0.png'},SKU-A\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3: .*mixes WebDataset samples"):
        load_manifest(str(bad))


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_shards_a_user_already_has(tmp_path):
    """Keys that are not integers (ids are positions), labels as names in .cls or .json, png or webp images."""
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(png, format="PNG")
    _tar(
        tmp_path / "a.tar",
        {"x/cat1.jpg": _jpeg(30), "x/cat1.cls": b"cat\n", "x/dog1.jpg": _jpeg(200), "x/dog1.json": b'{"label": "dog"}'},
    )
    _tar(tmp_path / "b.tar", {"x/cat2.png": png.getvalue(), "x/cat2.cls": b"cat"})
    m = load_manifest(str(tmp_path / "{a,b}.tar"))
    assert m.ids.tolist() == [0, 1, 2] and m.classes.names == ("cat", "dog")
    assert [m.classes.names[j] for j in m.labels] == ["cat", "dog", "cat"]
    x, label, sid = make_dataset(m, image_size=SIZE)[1]
    assert x.shape == (3, SIZE, SIZE) and int(label) == 1 and abs(int(x.float().mean()) - 200) < 3
    assert make_dataset(m, image_size=SIZE)[2][0].shape == (1, SIZE, SIZE)  # grayscale kept as one channel
    assert image_of(m, 2).shape == (8, 8, 3)

    _tar(tmp_path / "c.tar", {"x/1.jpg": _jpeg(1), "x/1.cls": b"a", "y/1.jpg": _jpeg(2), "y/1.cls": b"b"})
    assert load_manifest(str(tmp_path / "c.tar")).ids.tolist() == [0, 1]  # integer keys, but not distinct

    _tar(tmp_path / "bad.tar", {"k1.jpg": _jpeg(1)})
    with pytest.raises(DataError, match=r"bad\.tar: k1: no label"):
        load_manifest(str(tmp_path / "bad.tar"))
    _tar(tmp_path / "missing-000000.tar", {"k1.jpg": _jpeg(1), "k1.cls": b"a"})
    with pytest.raises(DataError, match=r"missing-000001\.tar: shard not found"):
        load_manifest(str(tmp_path / "missing-{000000..000001}.tar"))


def test_offsets_index_is_reused_and_rebuilt_when_the_shard_changes(tmp_path, monkeypatch):
    shard = tmp_path / "s.tar"
    _tar(shard, {"1.jpg": _jpeg(10), "1.cls": b"a"})
    built = []
    real = wds.build_index
    monkeypatch.setattr(wds, "build_index", lambda p: built.append(p) or real(p))
    assert read_webdataset(str(shard)).ids.tolist() == [1]
    wds._STORES.clear()
    assert read_webdataset(str(shard)).ids.tolist() == [1] and len(built) == 1  # from the cached index
    _tar(shard, {"1.jpg": _jpeg(10), "1.cls": b"a", "2.jpg": _jpeg(20), "2.cls": b"b"})
    assert read_webdataset(str(shard)).ids.tolist() == [1, 2] and len(built) == 2  # changed: rebuilt


def test_index_that_cannot_be_written_beside_the_shard_goes_to_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGUIDED_CACHE", str(tmp_path / "cache"))
    ro = tmp_path / "ro"
    ro.mkdir()
    _tar(ro / "s.tar", {"1.jpg": _jpeg(10), "1.cls": b"a"})
    (ro / ".s.tar.idx.npz").mkdir()  # the place beside the shard cannot take a file (as in a read-only folder)
    assert read_webdataset(str(ro)).ids.tolist() == [1]
    assert len(list((tmp_path / "cache" / "wds-index").glob("*.npz"))) == 1


def test_cli_preprocess_webdataset_then_train_and_evaluate_from_the_shards(tmp_path, image_csv, capsys):
    out = tmp_path / "shards"
    args = ["preprocess", str(image_csv), "--out", str(out), "--format", "webdataset", "--image-size", "16"]
    assert main([*args, "--shard-size", "10", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 3
    tiny = ["--model", "test_resnet", "--no-pretrained", "--image-size", "16", "--batch-size", "8", "--workers", "0"]
    pattern = str(out / "shard-{000000..000002}.tar")
    assert (
        main(["train", "--train", pattern, "--val", str(out), "--out", str(tmp_path / "run"), "--epochs", "1", *tiny])
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--test", str(out)]) == 0
    assert set(json.loads(capsys.readouterr().out)["per_class_error"]) == {"SKU-A", "SKU-B", "SKU-C"}


def test_report_thumbnails_open_a_shard_sample_by_its_path(tmp_path, image_csv):
    from lossguided.report.images import ImageResolver

    m = load_manifest(_webdataset(tmp_path, image_csv))
    resolver = ImageResolver()
    thumbs = resolver.thumbnails([m.paths[0], m.paths[23], f"{m.paths[0]}x"], workers=1, progress=False)
    assert thumbs[0][:2] == thumbs[1][:2] == b"\xff\xd8" and thumbs[2] is None  # JPEGs; an unknown key is missing
    assert resolver.missing == [f"{m.paths[0]}x"]


def test_eda_reads_sizes_and_hashes_of_shard_samples(tmp_path, image_csv):
    from lossguided.report.eda import scan_images

    m = load_manifest(_webdataset(tmp_path, image_csv))
    scan = scan_images(m, workers=1, progress=False)
    assert not scan.problems and set(scan.widths.tolist()) == set(scan.heights.tolist()) == {SIZE}
    assert all(scan.digests) and len(set(scan.digests)) == len(m)  # distinct images, distinct encoded bytes


@pytest.mark.parametrize("local_rank", [0, 1])
def test_under_torchrun_every_rank_reaches_the_barrier_also_when_the_read_fails(tmp_path, monkeypatch, local_rank):
    from types import SimpleNamespace

    import lossguided.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "get_info", lambda: SimpleNamespace(enabled=True, local_rank=local_rank))
    _tar(tmp_path / "s.tar", {"1.jpg": _jpeg(10), "1.cls": b"a"})
    assert load_manifest(str(tmp_path / "s.tar")).ids.tolist() == [1] and calls == ["barrier"]
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable tar shard"):
        load_manifest(str(tmp_path / "bad.tar"))
    assert calls == ["barrier", "barrier"]


@pytest.mark.fashion_mnist
def test_shards_of_the_built_in_benchmark_keep_its_class_order_and_true_labels(tmp_path):
    from lossguided.data import fashion_mnist

    m = fashion_mnist.load("train", fashion_mnist.FashionMnistOptions(train_limit=60))
    write_webdataset(m, tmp_path / "fm", image_size=28, shard_size=25, progress=False)
    back = load_manifest(str(tmp_path / "fm"))
    assert back.classes == m.classes  # classes.json: the benchmark's order, not sorted names
    for a in ("ids", "labels", "true_labels"):
        np.testing.assert_array_equal(getattr(back, a), getattr(m, a))


def test_confine_paths_leaves_stored_samples_alone(tmp_path, image_csv):
    from lossguided.data.manifest import check_confined

    spec = _webdataset(tmp_path, image_csv)
    check_confined(load_manifest(spec + "/shard-{000000..000002}.tar"))  # names `<shard>.tar#<key>`, read by offset
    check_confined(load_manifest(_preprocessed(tmp_path, image_csv)))  # original paths kept as names only


def test_a_key_twice_in_a_shard_is_an_error(tmp_path):
    """Two `3.png`/`3.cls` pairs in one shard: the second would silently replace the first sample."""
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("3.jpg", _jpeg(1)), ("3.cls", b"a"), ("3.jpg", _jpeg(2)), ("3.cls", b"b")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"dup\.tar: 3\.jpg: key '3' appears twice"):
        load_manifest(str(path))
