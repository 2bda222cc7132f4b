"""Data: manifests and class maps, the built-in Fashion-MNIST benchmark, label noise, datasets and transforms."""

from lossguided.data.manifest import ClassMap, DataError, Manifest, read_csv, read_image_folder, write_csv
from lossguided.data.sources import load_manifest
from lossguided.data.storage import Storage

__all__ = [
    "ClassMap",
    "DataError",
    "Manifest",
    "Storage",
    "load_manifest",
    "read_csv",
    "read_image_folder",
    "write_csv",
]
