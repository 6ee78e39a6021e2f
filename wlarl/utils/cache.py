"""Where wlarl keeps what it can rebuild: the bootstrap's policies and reward models, rendered state-probe frames."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$WLARL_CACHE`, else `$XDG_CACHE_HOME/wlarl`, else `~/.cache/wlarl`."""
    if os.environ.get("WLARL_CACHE"):
        return Path(os.environ["WLARL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wlarl"
