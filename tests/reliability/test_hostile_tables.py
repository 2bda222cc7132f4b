"""Loss tables crafted to break the reader: each is one line naming the file, never a traceback."""

import numpy as np
import pytest
from hostile import small_table

from lossguided.data.manifest import DataError
from lossguided.losstable import LossTable


@pytest.fixture
def columns(tmp_path):
    small_table(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as z:
        return {k: z[k] for k in z.files}


def _edit(cols, name, value):
    out = dict(cols)
    if value is None:
        out.pop(name)
    else:
        out[name] = value
    return out


CASES = [
    ("string loss", lambda c: _edit(c, "loss", np.array(["x"] * 20)), "column loss is <U1"),
    ("2-D loss", lambda c: _edit(c, "loss", np.zeros((20, 2), np.float32)), "column loss is float32 of 2 dimensions"),
    ("string n_records", lambda c: _edit(c, "n_records", np.array(["1"] * 20)), "column n_records is <U1"),
    (
        "pred out of range",
        lambda c: _edit(c, "pred", np.full(20, 7)),
        r"column pred must hold class indices in \[0, 2\)",
    ),
    ("no rows", lambda c: {k: (v[:0] if v.ndim and k != "classes" else v) for k, v in c.items()}, None),
]


@pytest.mark.parametrize(("name", "edit", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_table_is_one_line(tmp_path, columns, name, edit, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **edit(columns))
    with pytest.raises(DataError) as e:
        LossTable.load(path)
    text = str(e.value)
    assert "\n" not in text and "bad.npz" in text
    if message is not None:
        assert __import__("re").search(message, text), text


def test_a_table_that_would_inflate_to_gigabytes_is_refused_before_inflating(tmp_path, columns, monkeypatch):
    from lossguided import losstable

    monkeypatch.setattr(losstable, "MAX_INFLATED", 2**25)  # 32 MiB here for 1 GiB: the same rule, a smaller bomb
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **_edit(columns, "loss", np.zeros(10_000_000, np.float32)))  # 40 MB of zeros
    assert path.stat().st_size < 2**20
    with pytest.raises(DataError, match=r"bomb.npz: would inflate to 38 MiB from 0\.0 MiB"):
        LossTable.load(path)
