"""Loads the tiny WLA builders of tests/models/conftest.py for tests in other folders (conftests are not importable)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("wla_tiny_conftest", Path(__file__).parent / "models" / "conftest.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

tiny_policy = _mod.tiny_policy
tiny_obs = _mod.tiny_obs
tiny_batch = _mod.tiny_batch
IMAGE = _mod.IMAGE
