import numpy as np
import pytest
import torch

from lossguided.data import ClassMap, DataError, Manifest, Storage, load_manifest, read_csv, read_image_folder
from lossguided.data.datasets import ImageFileDataset, check_images
from lossguided.data.noise import add_label_noise, long_tail_counts, long_tail_subset
from lossguided.data.sources import make_dataset
from lossguided.data.transforms import PAPER_MEAN, PAPER_STD, BatchTransform


def test_csv_string_labels_get_a_stable_class_map(image_csv):
    m = read_csv(image_csv)
    assert m.classes.names == ("SKU-A", "SKU-B", "SKU-C")
    assert list(m.ids[:3]) == [0, 1, 2]
    assert m.classes.names[m.labels[0]] == "SKU-B"
    assert read_csv(image_csv).classes == m.classes


def test_integer_labels_sort_numerically():
    assert ClassMap.from_labels(np.array(["10", "2", "1"])).names == ("1", "2", "10")


def test_image_folder(tmp_path, image_csv):
    m = read_csv(image_csv)
    for p, lab in zip(m.paths, m.labels, strict=True):
        d = tmp_path / "tree" / m.classes.names[lab]
        d.mkdir(parents=True, exist_ok=True)
        (d / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    tree = read_image_folder(tmp_path / "tree")
    assert len(tree) == 24 and tree.classes == m.classes


def test_decode_makes_square_rgb_and_grayscale_becomes_three_channels(image_csv):
    ds = ImageFileDataset(read_csv(image_csv), image_size=16)
    img, label, sid = ds[1]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and sid == 1
    gray = torch.full((2, 1, 8, 8), 128, dtype=torch.uint8)
    out = BatchTransform().eval()(gray)
    assert out.shape == (2, 3, 8, 8)
    expected = (128 - torch.tensor(PAPER_MEAN)) / torch.tensor(PAPER_STD)
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_flip_only_when_training():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    t = BatchTransform(flip=True)
    t.eval()
    assert torch.equal(t(x), t(x))
    t.train()
    torch.manual_seed(0)
    out = t(x)
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, 3]).float().mean()
    assert 0.2 < flipped < 0.8  # about half the batch is mirrored


def test_long_tail_and_noise_are_seeded_and_exact():
    labels = np.repeat(np.arange(10), 100)
    counts = long_tail_counts(np.bincount(labels), imbalance_ratio=10)
    assert counts[0] == 100 and counts[-1] == 10
    idx = long_tail_subset(labels, imbalance_ratio=10, seed=1)
    assert np.array_equal(np.bincount(labels[idx]), counts)
    assert np.array_equal(idx, long_tail_subset(labels, imbalance_ratio=10, seed=1))
    noisy = add_label_noise(labels, rate=0.2, seed=3)
    assert (noisy != labels).sum() == 200
    pair = add_label_noise(labels, rate=0.1, kind="pairflip", seed=3)
    changed = pair != labels
    assert np.all(pair[changed] == (labels[changed] + 1) % 10)
    with pytest.raises(ValueError, match="not one of"):
        add_label_noise(labels, rate=0.1, kind="bogus")


@pytest.mark.fashion_mnist
def test_fashion_mnist_splits_are_disjoint_long_tailed_and_noisy():
    train = load_manifest("fashion-mnist", split="train")
    val = load_manifest("fashion-mnist", split="val")
    test = load_manifest("fashion-mnist", split="test")
    assert not set(train.ids) & set(val.ids)
    assert not set(test.ids) & set(train.ids)
    true_counts = np.bincount(train.true_labels)
    assert true_counts[0] / true_counts[-1] == pytest.approx(100, rel=0.02)
    assert (train.labels != train.true_labels).mean() == pytest.approx(0.2, abs=1e-3)
    assert np.array_equal(val.labels, val.true_labels)
    ds = make_dataset(val, image_size=32)
    images, labels, ids = ds.__getitems__([0, 1])
    assert images.shape == (2, 1, 32, 32) and ids.tolist() == val.ids[:2].tolist()


# -- bad input: one clear line naming the file and row ---------------------------------------------------------
def test_missing_columns(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("picture,kind\na.jpg,1\n")  # neither the columns nor an alias of theirs
    with pytest.raises(DataError, match=r"m.csv: row 1: missing column\(s\) \['path', 'label'\]"):
        read_csv(p)


def test_missing_image_names_row(tmp_path, image_csv):
    text = image_csv.read_text().splitlines()
    text.append("img/nope.jpg,SKU-A")
    image_csv.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"train.csv: row 26: image not found"):
        read_csv(image_csv)


def test_unreadable_image_names_row(image_csv):
    m = read_csv(image_csv)
    open(m.paths[4], "wb").write(b"not an image")
    with pytest.raises(DataError, match=r"train.csv: row 6: id 4: unreadable image"):
        check_images(m)
    with pytest.raises(DataError, match=r"id 4: cannot decode"):
        ImageFileDataset(m, image_size=8)[4]


def test_duplicate_ids(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    p = tmp_path / "m.csv"
    p.write_text("id,path,label\n7,a.png,x\n8,a.png,y\n7,a.png,x\n")
    with pytest.raises(DataError, match=r"m.csv: row 4: duplicate id 7 \(also on row 2\)"):
        read_csv(p)


def test_empty_label_and_unknown_label(tmp_path, image_csv):
    p = tmp_path / "m.csv"
    p.write_text("path,label\nimg/0.png,\n")
    with pytest.raises(DataError, match="row 2: empty label"):
        read_csv(p)
    classes = read_csv(image_csv).classes
    p.write_text("path,label\nimg/0.png,SKU-A\nimg/1.jpg,SKU-Z\n")
    with pytest.raises(DataError, match=r"m.csv: row 3: label 'SKU-Z' is not in the class map"):
        read_csv(p, classes=classes)


def test_empty_class_folder(tmp_path):
    (tmp_path / "tree" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="empty class folder"):
        read_image_folder(tmp_path / "tree")


@pytest.mark.fashion_mnist
def test_a_written_fashion_mnist_selection_reads_back_as_images(tmp_path):
    from lossguided.data.manifest import write_csv

    train = load_manifest("fashion-mnist", split="train")
    picked = train.subset(np.arange(0, len(train), 97))
    write_csv(picked, tmp_path / "selected.csv")
    back = load_manifest(str(tmp_path / "selected.csv"))
    assert back.classes == train.classes  # all ten classes in their order, even if the CSV lacks some
    assert np.array_equal(back.ids, picked.ids) and np.array_equal(back.labels, picked.labels)
    assert np.array_equal(back.images, picked.images) and np.array_equal(back.true_labels, picked.true_labels)

    text = (tmp_path / "selected.csv").read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0], text[1], text[2].replace("fashion-mnist:train", "photos/a.jpg")]))
    with pytest.raises(DataError, match=r"bad.csv: row 3: .*photos/a.jpg"):
        load_manifest(str(bad))
    i, p, lab = text[1].split(",", 2)
    bad.write_text("\n".join([text[0], f"{int(i) + 1},{p},{lab}"]))
    with pytest.raises(DataError, match=rf"bad.csv: row 2: id {int(i) + 1} differs from the path's #{i}"):
        load_manifest(str(bad))
    bad.write_text("\n".join([text[0], f"999999,fashion-mnist:test#999999,{lab}"]))
    with pytest.raises(DataError, match="bad.csv: row 2: fashion-mnist has no image with id 999999"):
        load_manifest(str(bad))


def test_a_manifest_holds_one_storage_that_says_its_kind():
    """The storage is the one place a manifest's pixels live: subsets take its rows and keep its root; `paths` and
    `images` only read it; a wrong row count or kind is one line naming the source."""
    classes = ClassMap(("a", "b"))
    m = Manifest(
        ids=[5, 6, 7], labels=[0, 1, 0], classes=classes, source="s.csv", storage=Storage.files(["x", "y", "z"])
    )
    assert m.storage.kind == "files" and m.paths == ["x", "y", "z"] and m.images is None
    sub = m.subset(np.array([2, 0]))
    assert sub.paths == ["z", "x"] and sub.storage.kind == "files" and m.select_ids([6]).paths == ["y"]
    stored = Manifest(
        ids=[1, 2], labels=[0, 1], classes=classes, source="p", storage=Storage.preprocessed("/p", ["o1", "o2"])
    )
    assert stored.subset(np.array([1])).storage.root == "/p" and stored.paths[0] == "o1"
    pixels = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    mem = Manifest(ids=[1, 2], labels=[0, 1], classes=classes, source="mem", storage=Storage.arrays(pixels))
    assert mem.paths is None and np.array_equal(mem.subset(np.array([1])).images, pixels[1:])
    with pytest.raises(DataError, match="s.csv: files storage has 2 rows, ids has 3"):
        Manifest(ids=[5, 6, 7], labels=[0, 1, 0], classes=classes, source="s.csv", storage=Storage.files(["x", "y"]))
    with pytest.raises(DataError, match="s.csv: path item 1 contains a NUL byte"):
        Manifest(ids=[5, 6], labels=[0, 1], classes=classes, source="s.csv", storage=Storage.files(["x", "y\0"]))
    with pytest.raises(ValueError, match="storage kind 'lmdb' is not one of"):
        Storage("lmdb", names=["x"])
    with pytest.raises(ValueError, match="preprocessed storage needs root"):
        Storage("preprocessed", names=["x"])
