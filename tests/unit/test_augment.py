"""Optional timm RandAugment of the training images (`randaugment` / `--aa`), off by default: it changes images
and nothing else, reproducibly under a seed, on in-memory and file datasets; a bad config string is one line; an
unset option leaves the run key as it was (older run folders still resume)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lossguided import config as config_mod
from lossguided.cli import main
from lossguided.data.augment import AugmentedBatchDataset, AugmentedDataset, with_randaugment
from lossguided.data.datasets import ArrayDataset
from lossguided.data.manifest import ClassMap, Manifest
from lossguided.data.storage import Storage
from lossguided.stages import run_key

STRONG = "rand-m9-n3-mstd0.5"


def in_memory(n: int = 16, channels: int = 1) -> ArrayDataset:
    rng = np.random.default_rng(0)
    shape = (n, 16, 16) if channels == 1 else (n, 16, 16, 3)
    images = rng.integers(0, 255, shape, dtype=np.uint8)
    m = Manifest(
        ids=np.arange(100, 100 + n),
        labels=np.arange(n) % 2,
        classes=ClassMap(("a", "b")),
        source="mem",
        storage=Storage.arrays(images),
    )
    return ArrayDataset(m, image_size=16)


def test_off_by_default_and_the_dataset_is_unchanged():
    ds = in_memory()
    assert with_randaugment(ds, None, image_size=16) is ds
    assert config_mod.TrainConfig().randaugment is None and config_mod.load("paper").finetune.randaugment is None


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_images_change_labels_and_ids_do_not_and_a_seed_repeats_them(channels):
    ds = in_memory(channels=channels)
    aug = with_randaugment(ds, STRONG, image_size=16)
    assert isinstance(aug, AugmentedBatchDataset)
    index = list(range(16))
    torch.manual_seed(0)
    images, labels, ids = aug.__getitems__(index)
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 16, 16)
    assert torch.equal(labels, ds.labels) and torch.equal(ids, ds.ids)
    plain = ds.images.expand(-1, 3, -1, -1) if channels == 1 else ds.images
    assert sum(not torch.equal(a, b) for a, b in zip(images, plain, strict=True)) >= 8
    torch.manual_seed(0)
    assert torch.equal(aug.__getitems__(index)[0], images)


def test_item_datasets_are_augmented_one_image_at_a_time():
    items = [(torch.full((3, 8, 8), 100, dtype=torch.uint8), 1, 7)]
    aug = with_randaugment(items, STRONG, image_size=8)
    assert type(aug) is AugmentedDataset and not hasattr(aug, "__getitems__")
    image, label, sample_id = aug[0]
    assert image.shape == (3, 8, 8) and (label, sample_id) == (1, 7)


def test_a_bad_config_string_is_one_line():
    with pytest.raises(config_mod.ConfigError, match="'rand-zz9' is not a timm RandAugment config"):
        config_mod.load("cpu-small", ["finetune.randaugment=rand-zz9"])
    with pytest.raises(config_mod.ConfigError, match="'bogus'"):
        config_mod.load("cpu-small", ["pretrain.randaugment=bogus"])


def test_unset_option_leaves_the_run_key_as_before():
    cfg = config_mod.load("cpu-small")
    data = SimpleNamespace(ids=np.arange(4), labels=np.zeros(4, np.int64))
    off = run_key(cfg, cfg.pretrain, data, init_from=None)
    assert "randaugment" not in off["training settings"]
    on = run_key(cfg, dataclasses.replace(cfg.pretrain, randaugment=STRONG), data, init_from=None)
    assert on["training settings"]["randaugment"] == STRONG and on != off


def test_train_with_timm_flag_name(tmp_path, image_csv, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--train",
        str(image_csv),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--aa",
        STRONG,
        "--model",
        "test_resnet",
        "--no-pretrained",
        "--image-size",
        "16",
        "--batch-size",
        "8",
    ]
    assert main(argv) == 0
    assert (out / "best.pt").is_file() and json.loads(capsys.readouterr().out)
    assert config_mod.load(out / "config.yaml").pretrain.randaugment == STRONG
