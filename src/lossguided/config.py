"""The single config schema: nested dataclasses, one documented field per knob, loaded from YAML recipes with dotted
`key=value` overrides. The resolved config is saved beside every run, so any stage restarts from its folder."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key and the valid choices."""


def default_workers() -> int:
    """DataLoader workers by default: what the machine has, at most 4 (in-memory data uses none)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores))


@dataclass
class DataConfig:
    train: str = "fashion-mnist"  # CSV manifest, ImageFolder root, or 'fashion-mnist'
    val: str | None = None  # defaults to the built-in val split when train is 'fashion-mnist'
    test: str | None = None  # defaults to the built-in test split when train is 'fashion-mnist'
    image_size: int = 256  # paper: resize to 256x256
    workers: int = field(default_factory=lambda: default_workers())  # DataLoader processes for image files
    threads: int | None = None  # torch CPU threads; None: the free usable cores (lossguided/threads.py)
    choose: str | None = None  # labelled split where 'auto' choices are read (logit_adjust's tau); None: val
    pin_memory: bool = True  # only used on CUDA
    persistent_workers: bool = True
    prefetch_factor: int = 2
    skip_bad_images: bool = False  # skip unreadable images and write their list, instead of stopping
    confine_paths: bool = False  # every image inside its manifest's folder (no '../', absolute paths, links out)
    # Built-in Fashion-MNIST benchmark: how it is made long-tailed and noisy.
    data_dir: str = "/usr/share/datasets/fashion-mnist"
    imbalance_ratio: float = 100.0
    noise_rate: float = 0.2
    noise_kind: str = "symmetric"  # symmetric | pairflip | confusion (class c -> noise_target[c])
    noise_target: list[int] | None = None  # confusion noise: each class's look-alike class (benchmarks derive it)
    noisy_val: bool = False  # the val split carries the same kind of noise (what most users have)
    data_seed: int = 0
    val_per_class: int = 100
    select_per_class: int = 0  # a second clean hold-out (the `select` split) where benchmarks read method choices
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(f"data.threads must be an integer >= 1 or null (the free cores), got {self.threads!r}")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {self.image_size}")
        from lossguided.data.noise import NOISE_KINDS

        if self.noise_kind not in NOISE_KINDS:
            raise ConfigError(f"data.noise_kind {self.noise_kind!r} is not one of {NOISE_KINDS}")
        if (self.noise_kind == "confusion") != (self.noise_target is not None):
            raise ConfigError("data.noise_target (one target class per class) goes with data.noise_kind=confusion")


@dataclass
class ModelConfig:
    name: str = "resnest101e"  # any timm model name
    pretrained: bool = True  # ImageNet weights through timm (needs the hub) ...
    pretrained_path: str | None = None  # ... or from a local file
    mean: list[float] | None = None  # input mean on 0-255 per channel; None: the model's pretrained config (timm)
    std: list[float] | None = None  # input std on 0-255 per channel; None: likewise

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ConfigError("model.mean and model.std go together (both 3 numbers on 0-255, or both null)")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if v is not None and (len(v) != 3 or not all(0 < x < 256 or (key == "mean" and x == 0) for x in v)):
                raise ConfigError(f"model.{key} must be 3 numbers on the 0-255 scale (one per RGB channel), got {v}")


HEAD_MODES = ("keep", "reset", "imprint")  # what a fine-tune does with the classifier it inherits (engine/head.py)
SCHEDULES = ("cosine", "step", "multistep", "tanh", "poly")  # timm's per-batch lr schedules (engine/optim.py)


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
    randaugment: str | None = None  # timm RandAugment of each training image, e.g. 'rand-m9-mstd0.5' (None: off)
    patience: int | None = None  # stop after this many epochs without a better val mean top-1 error
    amp: bool = True  # mixed precision on CUDA: bf16 where native, else fp16 with a GradScaler (CPU: off)
    channels_last: bool | None = None  # on CUDA; None: by architecture (off for ResNeSt, engine/trainer.py)
    compile: bool = False  # torch.compile the training forward
    ddp_bf16_compress: bool = False  # under torchrun on NCCL: bf16 gradient all-reduce (half the bytes)
    ddp_bucket_view: bool = True  # DDP gradient_as_bucket_view: no second copy of the gradients
    seed: int = 0
    save_every_steps: int = 0  # also write last.pt after every N batches of an epoch (0: only at its end)
    head: str | None = None  # fine-tune from a checkpoint: keep (None), reset or imprint its classifier (engine/)
    ema_decay: float | None = None  # timm ModelEmaV3 of the weights, e.g. 0.999: validated and shipped (None: off)
    sched: str = "cosine"  # the lr schedule, stepped per batch: cosine (eq. 2) | step | multistep | tanh | poly
    mixup: float = 0.0  # timm Mixup alpha (0: off); never while losses are recorded
    cutmix: float = 0.0  # timm CutMix alpha (0: off)

    def __post_init__(self) -> None:
        if self.sched not in SCHEDULES:
            raise ConfigError(f"sched {self.sched!r} is not one of {SCHEDULES}")
        if not (self.mixup >= 0 and self.cutmix >= 0):
            raise ConfigError(f"mixup and cutmix are alphas >= 0 (0: off), got {self.mixup}, {self.cutmix}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1) (e.g. 0.999) or null, got {self.ema_decay}")
        if self.head is not None and self.head not in HEAD_MODES:
            raise ConfigError(f"head {self.head!r} is not one of {HEAD_MODES} (or null: keep)")
        if self.save_every_steps < 0:
            raise ConfigError(f"save_every_steps must be >= 0, got {self.save_every_steps}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0 < self.lr_min_ratio <= 1:
            raise ConfigError(f"lr_min_ratio must be in (0, 1], got {self.lr_min_ratio}")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a finite number > 0 (training needs a step), got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("weight_decay and warmup_steps must be finite and >= 0")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 epoch (or null: no early stop), got {self.patience}")
        if self.randaugment is not None:
            from lossguided.data.augment import check_randaugment

            try:
                check_randaugment(self.randaugment)
            except ValueError as e:
                raise ConfigError(str(e)) from None


@dataclass
class RecordConfig:
    """Loss recording after pre-training: the paper fine-tunes once more on all the data and records as it goes."""

    epochs: int = 1  # > 1 averages over several epochs (O2U-Net style)
    lr: float | None = None  # None: the pre-training lr; 0 records without updating the weights
    batch_size: int | None = None
    # > 1: round 1 records out-of-fold losses instead (stages.record_losses_cross_fitted): this many models, each
    # pre-trained on the other folds, score the samples they never saw. Later rounds record as the paper does.
    folds: int = 1
    # lr of the recordings after round 1 (None: `lr`). 0 scores the fine-tuned model as it is: it trained only on
    # the selected list, and an epoch on all the noisy labels would teach it the wrong ones again.
    later_rounds_lr: float | None = None

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ConfigError(
                f"record.folds must be a whole number >= 1 (1: the paper's recording), got {self.folds!r}"
            )
        if self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1) or (self.lr or 0) < 0:
            raise ConfigError(
                f"record: epochs and batch_size must be >= 1 and lr >= 0, got {self.epochs}, "
                f"{self.batch_size}, {self.lr}"
            )
        for name in ("lr", "later_rounds_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"record.{name} must be a finite number >= 0, got {value}")


@dataclass
class RefineConfig:
    rounds: int = 2  # refine + fine-tune this many times (Table 2: "refinement again")
    bands: list[str] = field(default_factory=lambda: ["1-5"])  # united into one training list
    drop_loss_above: float | str | None = 9.0  # nats; 'auto' / 'hybrid': per class, from the losses (refine/)
    drop_quantile: float | None = None
    per_class: int | None = None  # width of the median band
    drop_disagreeing: bool = False  # also drop samples the model assigns to another class (refine/threshold.py)
    drop_confident_other: bool = False  # also drop samples confidently another class (refine/threshold.py)
    # after the last round: subtract tau * log(class share of the training list) from the logits, folded into the
    # classifier's bias (engine/prior.py); 'auto' picks tau on data.choose (default val); null: off
    logit_adjust: float | str | None = None
    # also fine-tune on the dropped samples that are confidently another class, under that class (refine/apply.py)
    relabel_confident: bool = False
    strict: bool = False  # the selection's warnings (refine/warnings.py) stop the run instead

    def __post_init__(self) -> None:
        from lossguided.refine.select import parse_band

        la = self.logit_adjust
        if la is not None and la != "auto" and (isinstance(la, bool | str) or not 0 <= la <= 10):
            raise ConfigError(f"refine.logit_adjust must be 'auto', a tau in [0, 10] or null, got {la!r}")

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
        if isinstance(self.drop_loss_above, str) and self.drop_loss_above not in ("auto", "hybrid"):
            raise ConfigError(
                f"refine.drop_loss_above must be a number, 'auto', 'hybrid' or null, got {self.drop_loss_above!r}"
            )
        if not isinstance(self.drop_loss_above, str | None) and self.drop_loss_above < 0:
            raise ConfigError(
                f"refine.drop_loss_above must be >= 0 (losses are >= 0: it would drop every sample), "
                f"got {self.drop_loss_above}"
            )
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

    def __post_init__(self) -> None:
        if self.data.workers < 0:
            raise ConfigError(
                f"data.workers must be >= 0 (0 reads images in the main process), got {self.data.workers}"
            )
        if self.data.prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be >= 1, got {self.data.prefetch_factor}")


def _from_dict(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            hint = _did_you_mean(str(key), fields)
            raise ConfigError(
                f"unknown key '{prefix}{key}'{hint}; valid keys in {prefix[:-1] or 'a recipe'}: {sorted(fields)}"
            )
        sub = _dataclass_type(fields[key])
        kwargs[key] = _from_dict(sub, value, f"{prefix}{key}.") if sub else _coerce(fields[key], value, prefix + key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix[:-1]):  # name the section: pretrain or finetune
            raise ConfigError(f"{prefix[:-1]}: {e}") from None
        raise


def _coerce(f: dataclasses.Field, value: Any, name: str) -> Any:
    """YAML reads `1e-4` (no dot) as a string: numbers given as text become numbers; anything else of the wrong
    kind (a number for a name, text in a list of seeds, null for a count) is a one-line error instead of a
    comparison failing later."""
    return _coerce_kinds({k.strip() for k in str(f.type).split("|")}, value, name, str(f.type))


def _coerce_kinds(kinds: set[str], value: Any, name: str, shown: str) -> Any:
    if "Any" in kinds:
        return value
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{name}: expected {shown}, got null")
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
        raise ConfigError(f"{name}: expected {shown}, got {value!r}")
    lists = [k for k in kinds if k.startswith("list[")]
    if lists:
        inner = {k.strip() for k in lists[0][5:-1].split("|")}
        if isinstance(value, str) and "str" in inner:
            value = [value]  # one band written without brackets
        if isinstance(value, list | tuple):
            return [_coerce_kinds(inner, v, f"{name}[{i}]", lists[0][5:-1]) for i, v in enumerate(value)]
    if isinstance(value, int | float | str) and kinds & {"int", "float"}:
        number = _as_number(value, float_ok="float" in kinds)
        if number is not None:
            return number
        if "str" not in kinds or not isinstance(value, str):
            raise ConfigError(f"{name}: expected {'a number' if 'float' in kinds else 'int'}, got {value!r}")
    if isinstance(value, str) and "str" in kinds:
        return value
    got = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else repr(value)
    hint = " (quote it to use it as text)" if "str" in kinds and isinstance(value, int | float) else ""
    raise ConfigError(f"{name}: expected {shown}, got {got}{hint}")


def _as_number(value: int | float | str, *, float_ok: bool) -> int | float | None:
    """`value` as the field's number (an int field refuses 2.5), or None when it is not one."""
    try:
        if float_ok:
            return float(value)
        if isinstance(value, float):
            return None
        return int(value)
    except ValueError:
        return None


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dataclass_type(f: dataclasses.Field):
    t = f.type if not isinstance(f.type, str) else globals().get(f.type)
    return t if dataclasses.is_dataclass(t) else None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Set `a.b.c` in the nested dict; a mapping value merges field by field into the section it names, so
    `{"pretrain": {"epochs": 1}}` changes the epochs and keeps the recipe's other pre-training settings."""
    parts = str(key).split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    if not isinstance(value, dict):
        node[parts[-1]] = value
        return
    if not isinstance(node.get(parts[-1]), dict):
        node[parts[-1]] = {}
    for sub_key, sub_value in value.items():
        _set_dotted(node[parts[-1]], str(sub_key), sub_value)


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value`, the value read as YAML (so 3, 0.1, true, null and [a, b] have their types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({_yaml_problem(e)})") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line from a YAML error: what is wrong and where (line, column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


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
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the recipe ({e.__class__.__name__}: {e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections")
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        _set_dotted(data, key, value)
    return _from_dict(RecipeConfig, data)


def differences(before: dict, now: dict, *, prefix: str = "", limit: int = 5) -> str:
    """The fields that differ between two config dicts, named for a person: `pretrain.lr 0.001 -> 0.03, ...`."""
    out: list[str] = []
    _collect_differences(before, now, prefix, out)
    more = f" and {len(out) - limit} more" if len(out) > limit else ""
    return ", ".join(out[:limit]) + more


def _collect_differences(before: Any, now: Any, prefix: str, out: list[str]) -> None:
    if isinstance(before, dict) and isinstance(now, dict):
        for key in list(now) + [k for k in before if k not in now]:
            name = f"{prefix}.{key}" if prefix else str(key)
            _collect_differences(before.get(key), now.get(key), name, out)
    elif before != now:
        out.append(f"{prefix or 'value'} {before!r} -> {now!r}")


# Settings of the input pipeline and of how a GPU runs the same math: a run resumed on another machine may change
# them (a saved channels_last: true from before it defaulted by architecture resumes too).
_SPEED_FIELDS = ("channels_last", "compile", "ddp_bf16_compress", "ddp_bucket_view")
RUNTIME_FIELDS = (
    "data.workers",
    "data.threads",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    *(f"{section}.{name}" for section in ("pretrain", "finetune") for name in _SPEED_FIELDS),
)


def from_dict(data: dict) -> RecipeConfig:
    return _from_dict(RecipeConfig, data)


def merge(cfg: RecipeConfig, overrides: dict[str, Any]) -> RecipeConfig:
    """A copy of `cfg` with dotted overrides applied and validated again."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    return from_dict(data)
