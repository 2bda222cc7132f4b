"""StringColumn: a column of strings in one byte buffer behaves like the list of strings it holds."""

import numpy as np
import pytest

from lossguided.data.strings import StringColumn

WORDS = ["a/b.jpg", "", "日本/x.png", "café", "z" * 300]


def test_a_column_is_the_list_it_was_made_from():
    col = StringColumn.from_strings(WORDS)
    assert len(col) == 5 and list(col) == WORDS and col[2] == WORDS[2] and col[-1] == WORDS[-1]
    assert col == WORDS and np.asarray(col).tolist() == WORDS
    assert col[np.array([4, 0, 0])].tolist() == [WORDS[4], WORDS[0], WORDS[0]]
    assert col[np.array([True, False, True, False, False])].tolist() == [WORDS[0], WORDS[2]]
    assert col[1:3].tolist() == WORDS[1:3]
    assert StringColumn.concat([col, col[:2]]).tolist() == WORDS + WORDS[:2]
    with pytest.raises(IndexError):
        col[5]


def test_prefix_is_stored_once_and_applied_on_access():
    col = StringColumn(*_raw(["x.png", "/abs.png"]), prefix="/data/")
    assert col.tolist() == ["/data/x.png", "/data//abs.png"]
    assert col.startswith_any(("/data/x",)).tolist() == [True, False]
    assert col.startswith_any(("/",)).all() and not col.startswith_any(("zzz",)).any()
    assert StringColumn.from_strings(["fm:train#1", "a.png"]).startswith_any(("fm:",)).tolist() == [True, False]


def test_large_takes_are_chunked_and_exact(monkeypatch):
    import lossguided.data.strings as strings

    monkeypatch.setattr(strings, "GATHER_BYTES", 64)  # many chunks
    words = [f"dir{i % 7}/{i:06d}.jpg" for i in range(2000)]
    col = StringColumn.from_strings(words)
    index = np.random.default_rng(0).permutation(2000)[:1500]
    assert col.take(index).tolist() == [words[i] for i in index]


def test_nul_is_refused():
    with pytest.raises(ValueError, match="item 1 contains a NUL byte"):
        StringColumn.from_strings(["a", "b\0c"])


def _raw(words):
    col = StringColumn.from_strings(words)
    return col.buffer, col.offsets


def test_range_hashes_depend_on_the_bytes_only(monkeypatch):
    import lossguided.data.strings as strings

    words = ["ab", "", "ab", "ba", "abc", "x" * 300, "x" * 300, "a", "b" * 5000]
    col = StringColumn.from_strings(words)
    h = strings.range_hashes(col.buffer, col.offsets[:-1], col.offsets[1:])
    assert h[0] == h[2] and h[5] == h[6] and len(set(h.tolist())) == 7
    monkeypatch.setattr(strings, "GATHER_BYTES", 24)  # chunks of 3 bytes: ranges straddle, one is longer
    assert np.array_equal(strings.range_hashes(col.buffer, col.offsets[:-1], col.offsets[1:]), h)
    shifted = StringColumn.from_strings(["zz", *words])  # the same ranges elsewhere in a buffer
    assert np.array_equal(strings.range_hashes(shifted.buffer, shifted.offsets[1:-1], shifted.offsets[2:]), h)
