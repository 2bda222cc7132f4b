"""Recipe settings: YAML's number quirks, wrong kinds and bad values are one-line errors when the config loads."""

import pytest

from lossguided import config as config_mod
from lossguided.config import ConfigError


def test_numbers_written_as_text_become_numbers():
    cfg = config_mod.load("cpu-small", ["finetune.lr=1e-4", "record.lr=0", "data.train_limit=300"])
    assert cfg.finetune.lr == 1e-4 and isinstance(cfg.finetune.lr, float)  # YAML reads 1e-4 as a string
    assert cfg.record.lr == 0.0 and cfg.data.train_limit == 300


@pytest.mark.parametrize(
    "override, message",
    [
        ("finetune.lr=abc", "finetune.lr: expected a number, got 'abc'"),
        ("finetune.flip=3", "finetune.flip: expected bool, got 3"),
        ("pretrain.epochs=2.5", "pretrain.epochs: expected int, got 2.5"),
        ("refine.bands=[]", "refine.bands is empty"),
        ("refine.drop_quantile=1.5", "refine.drop_quantile must be in [0, 1]"),
        ("ensemble.tta=vflip", "ensemble.tta 'vflip' is not one of"),
    ],
)
def test_bad_values_are_refused_on_load(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        config_mod.load("cpu-small", [override])
    assert message in str(e.value)


@pytest.mark.parametrize("name", config_mod.list_recipes())
def test_shipped_recipes_load_and_round_trip(name):
    cfg = config_mod.load(name, [])
    assert config_mod.from_dict(config_mod.to_dict(cfg)) == cfg
