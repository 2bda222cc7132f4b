"""Fixtures of the reliability suite; the hostile files themselves are made by `hostile.py`."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_check_cache(tmp_path, monkeypatch):
    """Every test its own remembered image checks, so one test's verdicts never answer another's."""
    monkeypatch.setenv("LOSSGUIDED_CACHE", str(tmp_path / "cache"))
