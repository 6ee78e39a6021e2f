"""Fixtures of the WLA model tests (the builders live in tests/wla_tiny.py)."""

from __future__ import annotations

import pytest
from wla_tiny import tiny_obs, tiny_policy

from wlarl.models.wla import WLAPolicy
from wlarl.types import Observation


@pytest.fixture(params=["gaussian", "flow"])
def policy(request) -> WLAPolicy:
    return tiny_policy(request.param)


@pytest.fixture
def obs() -> Observation:
    return tiny_obs()
