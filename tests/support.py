"""Helpers importable from any test (conftest modules are not: several share the name `conftest`)."""

from __future__ import annotations

import importlib.util

import pytest

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None and importlib.util.find_spec("mujoco") is not None
requires_metaworld = pytest.mark.skipif(
    not HAS_METAWORLD, reason="needs the metaworld extra: pip install -e '.[metaworld]'"
)
