"""Image sources: what a user names on the command line (a CSV, an ImageFolder tree, a `lossguided preprocess`
folder, WebDataset shards, or `fashion-mnist`), registered by name. Each source gives a manifest for a split, a
dataset at an image size, and one image by id (thumbnails); `load_manifest`, `make_dataset` and `image_of` pick the
source, so nothing outside `data/` asks which one it is. A new kind of input is one more `register_source`.

Under torchrun a CSV is parsed once per machine: the first rank of each machine reads it (and fills the content-hash
cache, see `data.csvread`), the others wait at a barrier and then map that cache instead of parsing again.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lossguided.data import fashion_mnist, webdataset
from lossguided.data.datasets import ArrayDataset, ImageFileDataset, check_images
from lossguided.data.decode import to_rgb
from lossguided.data.manifest import ClassMap, DataError, Manifest, read_csv, read_image_folder
from lossguided.data.preprocessed import is_preprocessed, make_preprocessed_dataset, open_store, read_preprocessed
from lossguided.data.storage import KINDS


@dataclass(frozen=True)
class ImageSource:
    """One kind of input. `matches(spec)` says whether a command-line name is this source's; `storage` is the kind of
    `Storage` (`data.storage.KINDS`) whose pixels it reads. `manifest(spec, split=, classes=, options=)` reads it
    (`options`: a mapping or object of data settings, such as the config's data section; each source takes what it
    needs and ignores the rest), `dataset(manifest, image_size=)` yields `(uint8 [C,S,S], label, id)`,
    `image(manifest, id)` is one image at its stored size, uint8 [H,W] or [H,W,3]. A source's manifests may hold
    another kind of storage (a CSV of shard samples is read by the WebDataset source). `default_split(train_spec,
    split)` names what `split` (val, test) reads when only the training set is named."""

    name: str
    description: str
    matches: Callable[[str], bool]
    storage: str
    manifest: Callable[..., Manifest]
    dataset: Callable[..., Dataset]
    image: Callable[[Manifest, int], np.ndarray]
    default_split: Callable[[str, str], str | None] = lambda spec, split: None


_SOURCES: dict[str, ImageSource] = {}


def register_source(source: ImageSource) -> ImageSource:
    """Add a source; sources are tried in the order registered, so register the most specific first."""
    if source.name in _SOURCES:
        raise ValueError(f"image source {source.name!r} is already registered")
    if source.storage not in KINDS:
        raise ValueError(f"image source {source.name!r}: storage {source.storage!r} is not one of {KINDS}")
    _SOURCES[source.name] = source
    return source


def list_sources(pattern: str = "*") -> list[str]:
    """Registered source names matching a wildcard pattern, in the order they are tried."""
    return [n for n in _SOURCES if fnmatch.fnmatch(n, pattern)]


def get_source(name: str) -> ImageSource:
    if name not in _SOURCES:
        raise ValueError(f"unknown image source {name!r}; one of {list_sources()}")
    return _SOURCES[name]


def source_for(spec: str) -> ImageSource:
    """The source a command-line name belongs to; an unknown one is an error naming the choices."""
    for source in _SOURCES.values():
        if source.matches(spec):
            return source
    raise DataError(
        f"{spec}: not found (expected a CSV manifest, an ImageFolder directory, a preprocessed folder, "
        "WebDataset .tar shards or 'fashion-mnist')"
    )


def source_of(manifest: Manifest) -> ImageSource:
    """The source that reads a manifest's pixels: the first registered for its storage's kind."""
    kind = manifest.storage.kind
    for source in _SOURCES.values():
        if source.storage == kind:
            return source
    raise DataError(f"{manifest.source}: no image source reads {kind} storage")


def load_manifest(
    spec: str,
    *,
    split: str = "train",
    classes: ClassMap | None = None,
    options: Mapping[str, Any] | object | None = None,
) -> Manifest:
    """`spec` is a CSV path, an ImageFolder root, a preprocessed folder (`lossguided preprocess`), WebDataset shards
    (a folder of .tar, one .tar or a brace pattern) or `fashion-mnist` (its `split` is taken: train, val or test).

    With `classes` (a checkpoint's or the training set's class map), labels are encoded through it. `options` are
    data settings by name (the config's data section, as a `DataConfig` or a dict): each source takes what it needs
    (the built-in benchmark how it is made), so a caller passes them without asking which source `spec` is.
    """
    return source_for(spec).manifest(spec, split=split, classes=classes, options=options)


def default_split_spec(train_spec: str, split: str) -> str | None:
    """What `split` (val or test) reads when a run names only its training set: the built-in benchmark's own
    splits; None for the other sources."""
    return source_for(train_spec).default_split(train_spec, split)


def make_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    """The dataset of a manifest (or subset) at `image_size`, from whichever source holds its pixels."""
    return source_of(manifest).dataset(manifest, image_size=image_size)


def image_of(manifest: Manifest, sample_id: int) -> np.ndarray:
    """One sample's image by id at its stored size (uint8 [H,W] or [H,W,3]), e.g. for a thumbnail."""
    return source_of(manifest).image(manifest, int(sample_id))


def image_by_name(name: str) -> np.ndarray | None:
    """The image that a sample's path names where that is no file of its own (a WebDataset sample's
    `<shard>.tar#<key>`), uint8 [H,W,3]; None when no source resolves the name."""
    return webdataset.image_by_name(name) if "#" in name else None


def bytes_by_name(name: str) -> bytes | None:
    """The encoded image that a sample's path names where that is no file of its own (`image_by_name`), for
    hashing and header reads without a decode; None when no source resolves the name."""
    return webdataset.bytes_by_name(name) if "#" in name else None


def _position(manifest: Manifest, sample_id: int) -> int:
    return int(manifest.positions_of(np.array([sample_id], dtype=np.int64))[0])


# -- the sources ------------------------------------------------------------------------------------------------
def _is_fashion_mnist(spec: str) -> bool:
    return spec == fashion_mnist.NAME or spec.startswith(fashion_mnist.NAME + ":")


def _fashion_mnist_manifest(spec: str, *, split: str, classes: ClassMap | None, options=None) -> Manifest:
    part = spec.split(":", 1)[1] if ":" in spec else split
    manifest = fashion_mnist.load(part, fashion_mnist.options_from(options))
    return manifest if classes is None else manifest.with_classes(classes)


def _array_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    return ArrayDataset(manifest, image_size=image_size)


def _array_image(manifest: Manifest, sample_id: int) -> np.ndarray:
    return np.asarray(manifest.images[_position(manifest, sample_id)])


def _is_preprocessed_spec(spec: str) -> bool:
    return Path(spec).is_dir() and is_preprocessed(spec)


def _preprocessed_manifest(spec: str, *, split: str, classes: ClassMap | None, options=None) -> Manifest:
    return read_preprocessed(spec, classes=classes)


def _preprocessed_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    return make_preprocessed_dataset(manifest, image_size=image_size)


def _preprocessed_image(manifest: Manifest, sample_id: int) -> np.ndarray:
    store = open_store(manifest.storage.root)
    pos = int(store.positions_of(np.array([sample_id]), source=manifest.source)[0])
    x = store.read(pos).permute(1, 2, 0).numpy()
    return x[..., 0] if x.shape[2] == 1 else x


def _webdataset_manifest(spec: str, *, split: str, classes: ClassMap | None, options=None) -> Manifest:
    return _once_per_machine(webdataset.read_webdataset, spec, classes=classes)  # one index build, cached for all


def _webdataset_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    return webdataset.WebDatasetDataset(manifest, image_size=image_size)


def _file_dataset(manifest: Manifest, *, image_size: int) -> Dataset:
    check_images(manifest)  # every command decodes its files once first (remembered: later calls cost a stat each)
    return ImageFileDataset(manifest, image_size=image_size)


def _file_image(manifest: Manifest, sample_id: int) -> np.ndarray:
    with Image.open(manifest.paths[_position(manifest, sample_id)]) as img:
        return np.array(to_rgb(img))


def _image_folder_manifest(spec: str, *, split: str, classes: ClassMap | None, options=None) -> Manifest:
    return read_image_folder(spec, classes=classes)


def _is_csv(spec: str) -> bool:
    path = Path(spec)
    return path.suffix.lower() == ".csv" or path.is_file()


def _csv_manifest(spec: str, *, split: str, classes: ClassMap | None, options=None) -> Manifest:
    """A CSV of image files, or `select`'s output for stored samples: built-in images (`fashion-mnist:train#123`,
    read into memory) or WebDataset samples (`<shard>.tar#<key>`, read from the shards)."""
    manifest = _once_per_machine(
        read_csv,
        Path(spec),
        classes=classes,
        builtin_prefixes=(fashion_mnist.PATH_PREFIX,),
        member_markers=(webdataset.NAME_MARKER,),
    )
    if manifest.paths.startswith_any((fashion_mnist.PATH_PREFIX,)).any():
        manifest = fashion_mnist.resolve_paths(manifest, fashion_mnist.options_from(options))
        return manifest.with_classes(classes or ClassMap(fashion_mnist.CLASS_NAMES))  # all 10, in their order
    if manifest.paths.contains(webdataset.NAME_MARKER).any():
        return webdataset.resolve_names(manifest)
    return manifest


def _once_per_machine(read: Callable[..., Manifest], spec, **kwargs) -> Manifest:
    """`read(spec)`, by local rank 0 first (it fills the cache: a CSV's columns, the shards' offsets indexes); the
    other ranks then read from that cache. Every rank reaches the barrier, also when the first read fails (then
    local rank 0 raises its error and the others find theirs)."""
    from lossguided.distributed import barrier, get_info

    info = get_info()
    if not info.enabled:
        return read(spec, **kwargs)
    manifest, error = None, None
    if info.local_rank == 0:
        try:
            manifest = read(spec, **kwargs)
        except Exception as e:  # re-raised below, once every rank has reached the barrier
            error = e
    barrier()
    if error is not None:
        raise error
    return manifest if manifest is not None else read(spec, **kwargs)


def _fashion_mnist_default_split(spec: str, split: str) -> str | None:
    return fashion_mnist.NAME if spec == fashion_mnist.NAME else None  # its own val and test splits


# Tried in this order: the most specific names first.
register_source(
    ImageSource(
        name="fashion-mnist",
        description="the built-in benchmark, in memory",
        matches=_is_fashion_mnist,
        storage="arrays",
        manifest=_fashion_mnist_manifest,
        dataset=_array_dataset,
        image=_array_image,
        default_split=_fashion_mnist_default_split,
    )
)
register_source(
    ImageSource(
        name="webdataset",
        description="WebDataset .tar shards (folder, .tar, brace pattern)",
        matches=webdataset.is_shard_spec,
        storage="webdataset",
        manifest=_webdataset_manifest,
        dataset=_webdataset_dataset,
        image=webdataset.image_of,
    )
)
register_source(
    ImageSource(
        name="preprocessed",
        description="a `lossguided preprocess` folder (jpeg-shards or memmap)",
        matches=_is_preprocessed_spec,
        storage="preprocessed",
        manifest=_preprocessed_manifest,
        dataset=_preprocessed_dataset,
        image=_preprocessed_image,
    )
)
register_source(
    ImageSource(
        name="image-folder",
        description="an ImageFolder tree root/<class>/<image>",
        matches=lambda s: Path(s).is_dir(),
        storage="files",
        manifest=_image_folder_manifest,
        dataset=_file_dataset,
        image=_file_image,
    )
)
register_source(
    ImageSource(
        name="csv",
        description="a CSV manifest path,label[,id] (paths relative to it)",
        matches=_is_csv,
        storage="files",
        manifest=_csv_manifest,
        dataset=_file_dataset,
        image=_file_image,
    )
)
