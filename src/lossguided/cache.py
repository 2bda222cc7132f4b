"""Where lossguided keeps what it may compute again (parsed manifests, image-check verdicts, WebDataset indexes):
`$LOSSGUIDED_CACHE`, else `$XDG_CACHE_HOME/lossguided`, else `~/.cache/lossguided`. `LOSSGUIDED_CACHE=off` (also
`0`, `none`, `false`) disables every cache; the one home of that rule, so no reader treats `off` as a folder."""

from __future__ import annotations

import os
from pathlib import Path

OFF = ("off", "0", "none", "false")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cache folder (`cache_dir` when given), or None when caching is off."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("LOSSGUIDED_CACHE", "")
    if env.strip().lower() in OFF:
        return None
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lossguided"
