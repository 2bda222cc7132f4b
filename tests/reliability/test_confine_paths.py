"""By default a CSV may name any readable image; with data.confine_paths (--confine-paths) every image must lie
inside the manifest's own folder, and one that does not stops the run with the file, row and path."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from lossguided.cli import main
from lossguided.data.manifest import DataError, check_confined, read_csv


@pytest.fixture
def data(tmp_path):
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    for folder in (inside, outside):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    os.symlink(outside / "a.png", inside / "link.png")
    return inside, outside


@pytest.mark.parametrize(
    ("path", "ok"),
    [("a.png", True), ("../elsewhere/a.png", False), ("{outside}/a.png", False), ("link.png", False)],
)
def test_paths_outside_the_manifest_folder_are_refused_when_confined(data, path, ok):
    inside, outside = data
    csv_path = inside / "train.csv"
    csv_path.write_text(f"path,label\na.png,x\n{path.format(outside=outside)},y\n")
    manifest = read_csv(csv_path, cache_dir=inside / ".cache")  # allowed by default
    if ok:
        check_confined(manifest)
        return
    with pytest.raises(DataError, match=r"train.csv: row 3: image .* lies outside"):
        check_confined(manifest)


def test_the_cli_flag_stops_before_any_work(data, capsys):
    inside, _ = data
    (inside / "train.csv").write_text("path,label\na.png,x\n../elsewhere/a.png,y\n")
    rc = main(
        [
            "train",
            "--train",
            str(inside / "train.csv"),
            "--confine-paths",
            "--model",
            "test_resnet",
            "--no-pretrained",
            "--out",
            str(inside / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "row 3" in err and "lies outside" in err and "Traceback" not in err
