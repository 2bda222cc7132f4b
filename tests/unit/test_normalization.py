"""Input normalization follows the model's own pretrained config unless a recipe pins it, and a checkpoint keeps
the values it was trained with, so evaluation and features normalize the same way."""

import pytest

from lossguided import config
from lossguided.data.transforms import PAPER_MEAN, PAPER_STD, normalization, saved_normalization


def test_the_paper_preset_pins_the_papers_values():
    assert normalization(config.load("paper").model) == (PAPER_MEAN, PAPER_STD)


def test_an_unpinned_model_follows_its_pretrained_config():
    mean, std = normalization(config.load(None, {"model.name": "test_resnet"}).model)
    assert mean == std == (127.5, 127.5, 127.5)  # timm's test_resnet: mean = std = 0.5
    assert normalization({"name": "no_such_model"}) == (PAPER_MEAN, PAPER_STD)


def test_pinned_values_win_and_are_checked():
    cfg = config.load(None, {"model.mean": [1, 2, 3], "model.std": [4, 5, 6]})
    assert normalization(cfg.model) == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    with pytest.raises(config.ConfigError, match="go together"):
        config.load(None, {"model.mean": [1, 2, 3]})
    with pytest.raises(config.ConfigError, match="3 numbers"):
        config.load(None, {"model.mean": [1, 2], "model.std": [1, 2, 3]})


def test_a_checkpoint_keeps_its_normalization():
    saved = {"normalization": {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}, "config": {}}
    assert saved_normalization(saved) == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    older = {"config": {"model": {"name": "test_resnet"}}}  # saved before the field existed: from its config
    assert saved_normalization(older) == ((127.5,) * 3, (127.5,) * 3)
