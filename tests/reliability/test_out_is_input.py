"""An --out that names one of the command's inputs stops before anything is written."""

import pytest
from hostile import small_table

from lossguided.cli import main


@pytest.fixture
def table(tmp_path):
    return small_table(tmp_path / "T.npz")


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
