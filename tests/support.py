"""Helpers importable from any test (conftest modules are not: several share the name `conftest`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None and importlib.util.find_spec("mujoco") is not None
requires_metaworld = pytest.mark.skipif(
    not HAS_METAWORLD, reason="needs the metaworld extra: pip install -e '.[metaworld]'"
)


def load_script(path, name: str):
    """Import a script that is not a package module (a benchmark or recipe) from its file, as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_benchmark(name: str):
    """Import `benchmarks/<name>.py` (see `load_script`)."""
    return load_script(Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py", f"{name}_cli")
