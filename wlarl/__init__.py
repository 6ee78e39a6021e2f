"""wlarl: GRPO post-training of World-Language-Action policies inside their own World Expert."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names resolved lazily so that `import wlarl` stays light (no transformers import until needed).
_LAZY = {
    "Observation": "wlarl.types",
    "ActionSample": "wlarl.types",
    "WorldPrediction": "wlarl.types",
    "Trajectories": "wlarl.types",
    "RewardOutput": "wlarl.types",
    "WLAConfig": "wlarl.models.wla",
    "WLAPolicy": "wlarl.models.wla",
    "GRPOWorldConfig": "wlarl.configs",
    "GRPOWorldTrainer": "wlarl.trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wlarl' has no attribute {name!r}")
