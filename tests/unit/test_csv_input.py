"""Odd CSV manifests (issue 13): each ends in a correct manifest or in one line naming the file and the row.

Every case is a row of a table: the bytes of the CSV (images `img/0.png` .. `img/3.png` exist beside it) and either
the expected (paths, labels, ids) or the pattern of the one-line error. Both readers (the NumPy one for quote-free
files and the csv-module one) are run on every case that they can take, and must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lossguided.data import DataError, csvread, read_csv, read_image_folder

OK = "ok"
HEADER = b"path,label\n"
ROWS = b"img/0.png,a\nimg/1.png,b\nimg/2.png,a\n"

CASES = [
    # name, CSV bytes, expected labels (names per row) or an error pattern
    ("plain", HEADER + ROWS, ["a", "b", "a"]),
    ("excel utf-8 bom header", b"\xef\xbb\xbf" + HEADER + ROWS, ["a", "b", "a"]),
    ("crlf line ends", (HEADER + ROWS).replace(b"\n", b"\r\n"), ["a", "b", "a"]),
    ("blank lines skipped", HEADER + b"\n" + ROWS + b"\n\n", ["a", "b", "a"]),
    ("spaces around fields", b"path , label\n".replace(b" ", b"") + b" img/0.png , a \nimg/1.png,\tb\n", ["a", "b"]),
    ("no final newline", HEADER + ROWS.rstrip(b"\n"), ["a", "b", "a"]),
    ("quoted fields", HEADER + b'"img/0.png","a, with comma"\nimg/1.png,"b ""q"""\n', ["a, with comma", 'b "q"']),
    ("utf-8 labels", HEADER + "img/0.png,Café\nimg/1.png,日本\n".encode(), ["Café", "日本"]),
    ("ids", b"id,path,label\n7,img/0.png,a\n-3,img/1.png,b\n", ["a", "b"]),
    ("id column with spaces", b"id,path,label\n 7 ,img/0.png,a\n", ["a"]),
    (
        "latin-1 text",
        HEADER + "img/0.png,a\nimg/1.png,Caf\xe9\n".encode("latin-1"),
        r"m.csv: row 3: not UTF-8 text .*byte 36",
    ),
    (
        "id >= 2^63",
        b"id,path,label\n1,img/0.png,a\n9223372036854775808,img/1.png,b\n",
        r"m.csv: row 3: id 9223372036854775808 does not fit in 64 bits",
    ),
    (
        "id not an integer",
        b"id,path,label\n1,img/0.png,a\n2.5,img/1.png,b\n",
        r"m.csv: row 3: id '2.5' is not an integer",
    ),
    (
        "field over 128 KB",
        HEADER + b"img/0.png,a\nimg/1.png," + b"x" * 140_000 + b"\n",
        r"m.csv: row 3: field larger than field limit",
    ),
    (
        "unclosed quote merges rows",
        HEADER + b'img/0.png,"a\nimg/1.png,b\nimg/2.png,a\n',
        r"m.csv: row 2: the label spans a line break \(a quote left open merges rows\)",
    ),
    (
        "unclosed quote in the path",
        HEADER + b'"img/0.png,a\nimg/1.png,b\n',
        r"m.csv: row 2: the path spans a line break",
    ),
    ("NUL byte in a label", HEADER + b"img/0.png,a\nimg/1.png,b\x00c\n", r"m.csv: row 3: NUL byte at byte 34"),
    ("missing label column", b"path,klass\nimg/0.png,a\n", r"m.csv: row 1: missing column\(s\) \['label'\]"),
    ("aliases file,class", b"file,class\n" + ROWS, ["a", "b", "a"]),
    ("aliases filepath,category", b"Filepath,Category\n" + ROWS, ["a", "b", "a"]),
    ("aliases image,sku with id", b"id,image,sku\n1,img/0.png,a\n2,img/1.png,b\n", ["a", "b"]),
    ("two path aliases", b"file,image,label\nimg/0.png,img/1.png,a\n", r"m.csv: row 1: missing column\(s\) \['path'\]"),
    ("bom before a bad header", b"\xef\xbb\xbfpath;label\nimg/0.png;a\n", r"m.csv: row 1: missing column\(s\)"),
    ("empty label", HEADER + b"img/0.png,a\nimg/1.png,\n", r"m.csv: row 3: empty label"),
    ("empty path, ragged row", HEADER + b"img/0.png,a\n\n,b,extra\n", r"m.csv: row 3: empty path"),
    ("short row", HEADER + b"img/0.png,a\nimg/1.png\n", r"m.csv: row 3: empty label"),
    ("header only", HEADER, r"m.csv: no samples"),
    ("empty file", b"", r"m.csv: row 1: missing column\(s\)"),
    ("image missing", HEADER + b"img/0.png,a\nimg/9.png,b\n", r"m.csv: row 3: image not found: .*img/9.png"),
    (
        "path over 128 KB",
        HEADER + b"img/0.png,a\n" + b"p" * 140_000 + b".png,b\n",
        r"m.csv: row 3: (image not found: .*p\.\.\.\(140\d{3} characters\)\.\.\.p+\.png$|field larger than field lim)",
    ),
    (
        "duplicate id",
        b"id,path,label\n4,img/0.png,a\n4,img/1.png,b\n",
        r"m.csv: row 3: duplicate id 4 \(also on row 2\)",
    ),
]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (4, 4)).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize(("name", "data", "expect"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("reader", ["auto", "csv-module"])
def test_csv_case(folder, monkeypatch, name, data, expect, reader):
    path = folder / "m.csv"
    path.write_bytes(data)
    if reader == "csv-module":  # force the general reader even for quote-free files
        monkeypatch.setattr(csvread, "_parse_fast", lambda *a: None)
    if isinstance(expect, str):
        with pytest.raises(DataError, match=expect) as err:
            read_csv(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        return
    m = read_csv(path)
    assert [m.classes.names[i] for i in m.labels] == expect
    assert all(p.startswith(str(folder)) and p.endswith(".png") for p in m.paths)
    if name == "ids":
        assert m.ids.tolist() == [7, -3]


def test_readers_agree_on_a_larger_file(folder, monkeypatch):
    rng = np.random.default_rng(0)
    lines = ["id,path,label"] + [f"{i * 3},img/{i % 4}.png,{rng.choice(['x', 'y10', '7', 'Z'])}" for i in range(5000)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    fast = read_csv(folder / "m.csv")
    monkeypatch.setattr(csvread, "_parse_fast", lambda *a: None)
    slow = read_csv(folder / "m.csv")
    assert fast.classes == slow.classes and np.array_equal(fast.labels, slow.labels)
    assert np.array_equal(fast.ids, slow.ids) and fast.paths == slow.paths


def test_hidden_folders_and_files_are_not_classes(folder):
    tree = folder / "tree"
    for d in ("a", "b", ".ipynb_checkpoints", ".git"):
        (tree / d).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tree / d / "0.png")
    Image.new("RGB", (4, 4)).save(tree / "a" / ".hidden.png")
    m = read_image_folder(tree)
    assert m.classes.names == ("a", "b") and len(m) == 2


def test_the_cache_is_reused_and_a_changed_csv_invalidates_it(folder, monkeypatch):
    from lossguided.data import manifest as manifest_module

    path, cache = folder / "m.csv", folder / "cache"
    path.write_bytes(HEADER + ROWS)
    first = read_csv(path, cache_dir=cache)
    assert len(list((cache / "manifests").iterdir())) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("parsed or checked again although the cache holds this CSV")

    with monkeypatch.context() as m:
        for name in ("_parse_fast", "_parse_csv_module"):
            m.setattr(csvread, name, refuse)
        m.setattr(manifest_module, "check_files_exist", refuse)
        again = read_csv(path, cache_dir=cache)
    assert again.paths == first.paths and np.array_equal(again.labels, first.labels)
    assert np.array_equal(again.ids, first.ids) and again.classes == first.classes

    path.write_bytes(HEADER + ROWS + b"img/3.png,c\n")  # changed content: parsed and checked again
    changed = read_csv(path, cache_dir=cache)
    assert len(changed) == 4 and changed.classes.names == ("a", "b", "c")
    assert len(list((cache / "manifests").iterdir())) == 2
    path.write_bytes(HEADER + ROWS + b"img/9.png,c\n")
    with pytest.raises(DataError, match="row 5: image not found"):
        read_csv(path, cache_dir=cache)


def test_paths_are_one_buffer_with_the_folder_stored_once(folder):
    (folder / "m.csv").write_bytes(HEADER + ROWS)
    m = read_csv(folder / "m.csv")
    assert m.paths.prefix == str(folder) + "/" and m.paths.buffer.tobytes() == b"img/0.pngimg/1.pngimg/2.png"
    assert m.subset(np.array([2, 0])).paths.tolist() == [str(folder / "img/2.png"), str(folder / "img/0.png")]


def test_existence_check_pairs_folder_and_name_across_chunks(folder, monkeypatch):
    from lossguided.data import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "CHECK_CHUNK", 3)
    for d in ("a", "b/c"):
        (folder / d).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (2, 2)).save(folder / d / f"{d[0]}{i}.png")
    (folder / "top.png").write_bytes((folder / "a" / "a0.png").read_bytes())
    rows = ["a/a0.png", "b/c/b1.png", "top.png", str(folder / "a" / "a2.png"), "./a/a1.png", "b/c/b2.png", "a/a1.png"]
    (folder / "m.csv").write_text("path,label\n" + "".join(f"{p},x\n" for p in rows))
    assert len(read_csv(folder / "m.csv")) == 7
    (folder / "m.csv").write_text("path,label\n" + "".join(f"{p},x\n" for p in [*rows, "a/b1.png"]))  # b1 is in b/c
    with pytest.raises(DataError, match=r"m.csv: row 9: image not found: .*a/b1.png"):
        read_csv(folder / "m.csv")
    (folder / "m.csv").write_text("path,label\n" + "".join(f"{p},x\n" for p in ["b/c", *rows]))  # a folder
    with pytest.raises(DataError, match=r"m.csv: row 2: image not found: .*b/c"):
        read_csv(folder / "m.csv")


def test_the_digest_names_the_csv_content(folder):
    import hashlib

    (folder / "m.csv").write_bytes(HEADER + ROWS)
    m = read_csv(folder / "m.csv")
    assert m.digest == hashlib.sha256(HEADER + ROWS).hexdigest()
    assert m.subset(np.array([0])).digest is None
