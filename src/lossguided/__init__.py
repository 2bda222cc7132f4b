"""Loss-guided data refinement for noisy, long-tailed image classification.

    import lossguided

    manifest = lossguided.load_manifest("train.csv")       # or an ImageFolder root, or a pandas DataFrame
    table = lossguided.record_losses(model, loader)         # any PyTorch model; batches carry (images, labels, ids)
    keep = lossguided.select(table, bands=["1-5", "6-10"])  # ids of the clean, balanced list
    worst = lossguided.rank_suspects(table, per_class=10)   # Suspects(ids, labels, predicted, losses, ...)
    metrics = lossguided.run_recipe("cpu-small", out_dir="runs/demo", overrides={"pretrain": {"epochs": 1}})

Importing the package is light: torch and timm load when a function that needs them is first called.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute): resolved on first use
_API = {
    "load_manifest": ("lossguided.api", "load_manifest"),
    "record_losses": ("lossguided.api", "record_losses"),
    "image_dataset": ("lossguided.data.sources", "make_dataset"),
    "select": ("lossguided.api", "select"),
    "rank_suspects": ("lossguided.api", "rank_suspects"),
    "Suspects": ("lossguided.api", "Suspects"),
    "run_recipe": ("lossguided.api", "run_recipe"),
    "load_config": ("lossguided.config", "load"),
    "RecipeConfig": ("lossguided.config", "RecipeConfig"),
    "ConfigError": ("lossguided.config", "ConfigError"),
    "Manifest": ("lossguided.data.manifest", "Manifest"),
    "ClassMap": ("lossguided.data.manifest", "ClassMap"),
    "DataError": ("lossguided.data.manifest", "DataError"),
    "LossTable": ("lossguided.losstable", "LossTable"),
    "create_model": ("lossguided.models", "create_model"),
    "load_model": ("lossguided.models", "load_model"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'lossguided' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
