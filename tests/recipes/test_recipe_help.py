"""Every recipe's --help prints its options (argparse formats help strings with %, so a stray one breaks it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CONFIGS = {
    "collect_demos": "CollectConfig",
    "evaluate": "EvaluateConfig",
    "grpo_world": "GRPOWorldConfig",
    "sft_wla": "SFTWLAConfig",
    "train_dynamics_ensemble": "TrainDynamicsEnsembleConfig",
    "train_reward": "TrainRewardConfig",
    "train_state_reward": "TrainStateRewardConfig",
}


@pytest.mark.parametrize("recipe", sorted(CONFIGS))
def test_recipe_help_lists_every_option(recipe, monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    spec = importlib.util.spec_from_file_location(f"_help_{recipe}", RECIPES / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    cls = getattr(module, CONFIGS[recipe])
    text = HfArgumentParser(cls).format_help()
    fields = [f for f in cls.__dataclass_fields__ if not f.startswith("_")]
    missing = [f for f in fields if f"--{f}" not in text]
    assert not missing, f"{recipe} --help lacks {missing[:5]}"
