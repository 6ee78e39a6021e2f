"""Config parsing shared by every recipe: YAML preset + command-line overrides on the stock HfArgumentParser.

A preset file (`recipes/configs/debug.yaml`, `default.yaml`, …) holds one section per recipe::

    collect_demos: {tasks: [reach-v3], episodes_per_task: 4}
    sft_wla: {max_steps: 20}
    grpo_world: {max_steps: 2}

A recipe reads its own section (a file without recipe sections is read whole). Values on the command line
override the preset: ``python recipes/sft_wla.py --config recipes/configs/debug.yaml --max_steps 5``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

T = TypeVar("T")

RECIPE_SECTIONS = (
    "collect_demos",
    "sft_wla",
    "train_reward",
    "train_state_reward",
    "grpo_world",
    "evaluate",
    "headline",
)
PRESET_DIR = Path(__file__).resolve().parent.parent / "recipes" / "configs"


def resolve_preset(path_or_name: str) -> Path:
    """A preset given as a path, or as a bare name looked up in `recipes/configs/` (``debug`` → debug.yaml)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    for candidate in (PRESET_DIR / path_or_name, PRESET_DIR / f"{path_or_name}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(q.stem for q in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise FileNotFoundError(f"config {path_or_name!r}: no such file, and no preset of that name (presets: {names})")


def load_section(path_or_name: str, section: str) -> dict[str, Any]:
    """The `section` of a preset file as a dict (the whole file when it has no recipe sections)."""
    path = resolve_preset(path_or_name)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    if any(k in data for k in RECIPE_SECTIONS):
        data = data.get(section) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config {path}: section {section!r} must be a mapping")
    return dict(data)


def parse_config(cls: type[T], section: str, argv: list[str] | None = None, default_preset: str | None = None) -> T:
    """Build `cls` (a dataclass) from `--config` (a preset file or name) plus command-line overrides.

    Unknown keys in the preset or on the command line raise an error naming them. Overriding ``--reward_funcs``
    without ``--reward_weights`` drops the preset's weights (each listed function gets weight 1.0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = default_preset
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a value: a YAML file or a preset name such as 'debug'")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    parser = HfArgumentParser(cls)
    if config_path is not None:
        values = load_section(config_path, section)
        if _given(argv, "reward_funcs") and not _given(argv, "reward_weights"):
            # The preset's weights belong to the preset's functions: other functions get 1.0 each.
            values.pop("reward_weights", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"config {config_path} [{section}]: unknown field(s) {unknown} for {cls.__name__}; "
                f"valid fields include {sorted(known)[:40]}"
            )
        parser.set_defaults(**values)
    (cfg, extra) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if extra:
        raise ValueError(f"unknown command-line argument(s) {extra} for {cls.__name__}")
    return cfg


def _given(argv: list[str], name: str) -> bool:
    """Whether option `--name` is on the command line (as `--name value …` or `--name=value`)."""
    flag = f"--{name}"
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def save_config(cfg: Any, output_dir: str | os.PathLike) -> Path:
    """Write the config a recipe ran with to `output_dir/config.json` (atomically)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    path = out / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path
