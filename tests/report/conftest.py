"""Fixtures of the report tests: a fake finished run folder (see runfolder.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runfolder import make_fake_run


@pytest.fixture
def fake_run(tmp_path: Path) -> dict:
    return make_fake_run(tmp_path)
