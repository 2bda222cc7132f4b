"""Shared fixtures: tiny data made in the test (real Fashion-MNIST subsets and small JPEG/PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lossguided import threads  # noqa: E402

threads.configure()  # the free cores: on a half-busy 2-core machine 2 threads run several times slower than 1
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture
def image_csv(tmp_path: Path) -> Path:
    """A CSV manifest of 24 small real-looking images in 3 string-labelled classes (SKU codes)."""
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    (tmp_path / "img").mkdir()
    for i in range(24):
        sku = ["SKU-B", "SKU-A", "SKU-C"][i % 3]
        arr = (rng.random((20 + i, 30, 3)) * 255).astype(np.uint8)
        arr[..., i % 3] = 200  # a class-dependent colour, so a model can learn something
        ext = "jpg" if i % 2 else "png"
        Image.fromarray(arr).save(tmp_path / "img" / f"{i}.{ext}")
        rows.append(f"img/{i}.{ext},{sku}")
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


SLOW_DIRS = ("distributed", "integration")  # end-to-end training runs; `pytest -m "not slow"` is the fast path


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(f"/tests/{d}/" in str(item.fspath) for d in SLOW_DIRS):
            item.add_marker(pytest.mark.slow)
    if not FMNIST.is_file():
        skip = pytest.mark.skip(reason=f"{FMNIST} missing: run `make data`")
        for item in items:
            if "fashion_mnist" in item.keywords:
                item.add_marker(skip)
