"""The single config schema: nested dataclasses, one documented field per knob, loaded from YAML recipes with dotted
`key=value` overrides. The resolved config is saved beside every run, so any stage restarts from its folder."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key and the valid choices."""


@dataclass
class DataConfig:
    train: str = "fashion-mnist"  # CSV manifest, ImageFolder root, or 'fashion-mnist'
    val: str | None = None  # defaults to the built-in val split when train is 'fashion-mnist'
    test: str | None = None  # defaults to the built-in test split when train is 'fashion-mnist'
    image_size: int = 256  # paper: resize to 256x256
    workers: int = 4  # DataLoader worker processes for image files (in-memory data uses none)
    pin_memory: bool = True  # only used on CUDA
    persistent_workers: bool = True
    prefetch_factor: int = 2
    skip_bad_images: bool = False  # skip unreadable images and write their list, instead of stopping
    # Built-in Fashion-MNIST benchmark: how it is made long-tailed and noisy.
    data_dir: str = "/usr/share/datasets/fashion-mnist"
    imbalance_ratio: float = 100.0
    noise_rate: float = 0.2
    noise_kind: str = "symmetric"  # symmetric | pairflip
    data_seed: int = 0
    val_per_class: int = 100
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.noise_kind not in ("symmetric", "pairflip"):
            raise ConfigError(f"data.noise_kind {self.noise_kind!r} is not one of ('symmetric', 'pairflip')")


@dataclass
class ModelConfig:
    name: str = "resnest101e"  # any timm model name
    pretrained: bool = True  # ImageNet weights through timm (needs the hub) ...
    pretrained_path: str | None = None  # ... or from a local file


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 24  # paper: 24
    lr: float = 1e-4  # paper: 1e-4 ...
    lr_min_ratio: float = 0.1  # ... decayed per batch by eq. (2) to lr/10
    warmup_steps: int = 0
    optimizer: str = "lookahead_radam"  # Ranger; any timm optimizer name
    weight_decay: float = 0.0
    smoothing: float = 0.0  # eq. (1) eps; the paper uses 0.2 when fine-tuning, 0 in pre-training
    flip: bool = False  # horizontal flip p=0.5
    patience: int | None = None  # stop after this many epochs without a better val mean top-1 error
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    seed: int = 0
    save_every_steps: int = 0  # also write last.pt after every N batches of an epoch (0: only at its end)

    def __post_init__(self) -> None:
        if self.save_every_steps < 0:
            raise ConfigError(f"save_every_steps must be >= 0, got {self.save_every_steps}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0 < self.lr_min_ratio <= 1:
            raise ConfigError(f"lr_min_ratio must be in (0, 1], got {self.lr_min_ratio}")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.lr < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("lr, weight_decay and warmup_steps must be >= 0")


@dataclass
class RecordConfig:
    """Loss recording after pre-training: the paper fine-tunes once more on all the data and records as it goes."""

    epochs: int = 1  # > 1 averages over several epochs (O2U-Net style)
    lr: float | None = None  # None: the pre-training lr; 0 records without updating the weights
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1) or (self.lr or 0) < 0:
            raise ConfigError(f"record: epochs and batch_size must be >= 1 and lr >= 0, got {self.epochs}, "
                              f"{self.batch_size}, {self.lr}")  # fmt: skip


@dataclass
class RefineConfig:
    rounds: int = 2  # refine + fine-tune this many times (Table 2: "refinement again")
    bands: list[str] = field(default_factory=lambda: ["1-5"])  # united into one training list
    drop_loss_above: float | None = 9.0
    drop_quantile: float | None = None
    per_class: int | None = None  # width of the median band

    def __post_init__(self) -> None:
        from lossguided.refine.select import parse_band

        if self.rounds < 0:
            raise ConfigError(f"refine.rounds must be >= 0, got {self.rounds}")
        if isinstance(self.bands, str):
            self.bands = [self.bands]
        if not self.bands:
            raise ConfigError("refine.bands is empty: nothing would be selected")
        for band in self.bands:
            try:
                parse_band(band)
            except ValueError as e:
                raise ConfigError(f"refine.bands: {e}") from None
        if self.drop_quantile is not None and not 0 <= self.drop_quantile <= 1:
            raise ConfigError(f"refine.drop_quantile must be in [0, 1], got {self.drop_quantile}")
        if self.per_class is not None and self.per_class < 1:
            raise ConfigError(f"refine.per_class must be >= 1, got {self.per_class}")


@dataclass
class EnsembleConfig:
    """Paper section 3.5-3.6: models of other seeds combined through saved features with test-time augmentation."""

    seeds: list[int] = field(default_factory=list)  # extra seeds for the last fine-tune; empty: no ensemble row
    tta: str = "hflip"  # none | hflip | dihedral8 (paper: hflip) | auto (none or hflip, by val error)

    def __post_init__(self) -> None:
        if self.tta not in ("none", "hflip", "dihedral8", "auto"):
            raise ConfigError(f"ensemble.tta {self.tta!r} is not one of ('none', 'hflip', 'dihedral8', 'auto')")


@dataclass
class RecipeConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(smoothing=0.2, flip=True, patience=3))
    refine: RefineConfig = field(default_factory=RefineConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def _from_dict(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}{key!r}; valid keys: {sorted(fields)}")
        sub = _dataclass_type(fields[key])
        kwargs[key] = _from_dict(sub, value, f"{prefix}{key}.") if sub else _coerce(fields[key], value, prefix + key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(f: dataclasses.Field, value: Any, name: str) -> Any:
    """YAML reads `1e-4` (no dot) as a string: numbers given as text become numbers; anything else of the wrong
    kind is a one-line error instead of a comparison failing later."""
    kinds = {k.strip() for k in str(f.type).split("|")}
    if value is None or isinstance(value, bool) and "bool" in kinds:
        return value
    try:
        if "float" in kinds and isinstance(value, int | float | str) and not isinstance(value, bool):
            return float(value)
        if "int" in kinds and isinstance(value, int | str) and not isinstance(value, bool):
            return int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if kinds & {"int", "float", "bool"} and not kinds & {"str", "Any"}:
        raise ConfigError(f"{name}: expected {f.type}, got {value!r}")
    return value


def _dataclass_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else globals().get(f.type)
    return t if dataclasses.is_dataclass(t) else None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value`, the value read as YAML (so 3, 0.1, true, null and [a, b] have their types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def recipe_path(name_or_path: str) -> Path:
    """A recipe file, or the name of one shipped with the package (`paper`, `cpu-small`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = resources.files("lossguided") / "configs" / f"{name_or_path}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"recipe {name_or_path!r} not found; shipped recipes: {list_recipes()}")


def list_recipes() -> list[str]:
    return sorted(
        p.name[:-5] for p in (resources.files("lossguided") / "configs").iterdir() if p.name.endswith(".yaml")
    )


def load(recipe: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> RecipeConfig:
    """Read a recipe (file or shipped name; None = defaults), apply dotted overrides, validate."""
    data: dict = {}
    if recipe is not None:
        path = recipe_path(str(recipe))
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections")
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        _set_dotted(data, key, value)
    return _from_dict(RecipeConfig, data)


def from_dict(data: dict) -> RecipeConfig:
    return _from_dict(RecipeConfig, data)


def merge(cfg: RecipeConfig, overrides: dict[str, Any]) -> RecipeConfig:
    """A copy of `cfg` with dotted overrides applied and validated again."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    return from_dict(data)
