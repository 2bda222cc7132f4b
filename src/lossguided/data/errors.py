"""The data layer's error types, at the bottom of the package so that anything (file helpers, decoders, sources) can
raise them without importing manifests."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file and row."""
