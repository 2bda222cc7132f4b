"""An --out that names one of the command's inputs stops before anything is written."""

import numpy as np
import pytest

from lossguided.cli import main
from lossguided.data.manifest import ClassMap
from lossguided.losstable import LossTable


@pytest.fixture
def table(tmp_path):
    n = 20
    path = tmp_path / "T.npz"
    LossTable(
        ids=np.arange(n),
        labels=np.arange(n) % 2,
        losses=np.linspace(0, 3, n).astype(np.float32),
        n_records=np.ones(n, np.int32),
        preds=np.zeros(n, np.int64),
        classes=ClassMap(("a", "b")),
        paths=np.array([f"/img/{i}.png" for i in range(n)], dtype=object),
    ).save(path)
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["select", "{T}", "--out", "{T}"],
        ["suspects", "{T}", "--out", "{T}"],
    ],
    ids=["select", "suspects"],
)
def test_out_never_overwrites_an_input(table, capsys, argv):
    before = table.read_bytes()
    assert main([a.format(T=table) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would overwrite the input" in err[0]
    assert table.read_bytes() == before
