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


def test_a_nested_override_merges_field_by_field():
    recipe = config_mod.load("cpu-small")
    cfg = config_mod.load("cpu-small", {"pretrain": {"epochs": 1}})
    assert cfg.pretrain.epochs == 1
    assert cfg.pretrain.lr == recipe.pretrain.lr == 2e-3 and cfg.pretrain.batch_size == recipe.pretrain.batch_size
    merged = config_mod.merge(recipe, {"finetune": {"lr": 1e-3}, "data.image_size": 48})
    assert merged.finetune.lr == 1e-3 and merged.finetune.patience == recipe.finetune.patience
    assert merged.data.image_size == 48 and merged.data.train == recipe.data.train


@pytest.mark.parametrize(
    "override, message",
    [
        ("ensemble.seeds=['a']", "ensemble.seeds[0]: expected int, got 'a'"),
        ("model.name=123", "model.name: expected str, got 123"),
        ("data.train=5", "data.train: expected str, got 5"),
        ("pretrain.epochs=null", "pretrain.epochs: expected int, got null"),
        ("pretrain.patience=0", "pretrain: patience must be >= 1"),
        ("finetune.patience=-1", "finetune: patience must be >= 1"),
        ("pretrain.lr=.inf", "pretrain: lr must be a finite number > 0"),
        ("finetune.lr=0", "finetune: lr must be a finite number > 0"),
        ("record.lr=.nan", "record.lr must be a finite number >= 0"),
        ("record.folds=0", "record.folds must be a whole number >= 1"),
        ("record.later_rounds_lr=-1", "record.later_rounds_lr must be a finite number >= 0"),
        ("data.workers=-1", "data.workers must be >= 0"),
        ("pretrain.epoch=3", "unknown key 'pretrain.epoch' (did you mean 'epochs'?)"),
        ("pretrian.epochs=3", "unknown key 'pretrian' (did you mean 'pretrain'?)"),
        ("pretrain.lr=[1,", "override 'pretrain.lr=[1,': value is not valid YAML"),
    ],
)
def test_settings_that_cannot_train_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        config_mod.load("cpu-small", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_recipe_with_a_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("pretrain:\n  lr: [1,\n")
    with pytest.raises(ConfigError) as e:
        config_mod.load(bad)
    assert str(e.value).startswith(f"{bad}: not valid YAML") and "line 3" in str(e.value) and "\n" not in str(e.value)


def test_workers_default_to_what_the_machine_has():
    assert config_mod.DataConfig().workers == config_mod.default_workers() <= 4


def test_differences_name_the_fields():
    a, b = config_mod.to_dict(config_mod.load("cpu-small")), config_mod.to_dict(config_mod.load("paper"))
    text = config_mod.differences(a, b)
    assert "model.name 'resnet10t' -> 'resnest101e'" in text and text.endswith("more")


def test_model_names_get_did_you_mean():
    from lossguided.models import check_model_name

    with pytest.raises(ConfigError, match="did you mean 'resnet10t'"):
        check_model_name("resnet10")
    check_model_name("resnet10t.c3_in1k")  # a pretrained tag is fine
