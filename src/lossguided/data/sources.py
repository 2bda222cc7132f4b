"""Turn what a user names on the command line (a CSV, an ImageFolder tree, or `fashion-mnist`) into a manifest.

Under torchrun a CSV is parsed once per machine: the first rank of each machine reads it (and fills the content-hash
cache, see `data.csvread`), the others wait at a barrier and then map that cache instead of parsing again.
"""

from __future__ import annotations

from pathlib import Path

from lossguided.data import fashion_mnist
from lossguided.data.manifest import ClassMap, DataError, Manifest, read_csv, read_image_folder
from lossguided.data.preprocessed import is_preprocessed, read_preprocessed


def load_manifest(
    spec: str,
    *,
    split: str = "train",
    classes: ClassMap | None = None,
    fashion_mnist_options: fashion_mnist.FashionMnistOptions | None = None,
) -> Manifest:
    """`spec` is a CSV path, an ImageFolder root, a preprocessed folder (`lossguided preprocess`), or `fashion-mnist`
    (its `split` is taken: train, val or test).

    With `classes` (a checkpoint's or the training set's class map), labels are encoded through it.
    """
    if spec == fashion_mnist.NAME or spec.startswith(fashion_mnist.NAME + ":"):
        part = spec.split(":", 1)[1] if ":" in spec else split
        manifest = fashion_mnist.load(part, fashion_mnist_options or fashion_mnist.FashionMnistOptions())
        return manifest if classes is None else manifest.with_classes(classes)
    path = Path(spec)
    if path.is_dir() and is_preprocessed(path):  # written by `lossguided preprocess`
        return read_preprocessed(path, classes=classes)
    if path.is_dir():
        return read_image_folder(path, classes=classes)
    if path.suffix.lower() == ".csv" or path.is_file():
        manifest = _read_csv_once_per_machine(path, classes=classes, builtin_prefixes=(fashion_mnist.PATH_PREFIX,))
        if manifest.paths.startswith_any((fashion_mnist.PATH_PREFIX,)).any():  # e.g. `select`'s output
            options = fashion_mnist_options or fashion_mnist.FashionMnistOptions()
            manifest = fashion_mnist.resolve_paths(manifest, options)
            return manifest.with_classes(classes or ClassMap(fashion_mnist.CLASS_NAMES))  # all 10, in their order
        return manifest
    raise DataError(f"{spec}: not found (expected a CSV manifest, an ImageFolder directory or 'fashion-mnist')")


def _read_csv_once_per_machine(path: Path, **kwargs) -> Manifest:
    """`read_csv`, by local rank 0 first; every rank reaches the barrier, also when the first read fails (then
    local rank 0 raises its error and the others find theirs)."""
    from lossguided.engine.distributed import barrier, get_info

    info = get_info()
    if not info.enabled:
        return read_csv(path, **kwargs)
    manifest, error = None, None
    if info.local_rank == 0:
        try:
            manifest = read_csv(path, **kwargs)
        except Exception as e:  # re-raised below, once every rank has reached the barrier
            error = e
    barrier()
    if error is not None:
        raise error
    return manifest if manifest is not None else read_csv(path, **kwargs)
