"""LOSSGUIDED_CACHE=off disables every cache: nothing is written, and no folder named `off` appears."""

from lossguided.cache import cache_root
from lossguided.data import read_csv
from lossguided.data.datasets import check_images


def test_off_disables_every_cache(tmp_path, image_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("off", "OFF", "0", "none", "false"):
        monkeypatch.setenv("LOSSGUIDED_CACHE", value)
        assert cache_root() is None
    monkeypatch.setenv("LOSSGUIDED_CACHE", "off")
    manifest = read_csv(image_csv)
    check_images(manifest)
    assert not (tmp_path / "off").exists()
    monkeypatch.setenv("LOSSGUIDED_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
