"""benchmarks/bench_goal_action.py: the linear R² that says how much an action follows a goal."""

from __future__ import annotations

import numpy as np
import pytest
from support import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_goal_action")


def test_linear_r2_separates_an_action_that_follows_the_goal_from_one_that_does_not(bench):
    rng = np.random.default_rng(0)
    hand, goal = rng.normal(size=(500, 3)), rng.normal(size=(500, 3))
    follows = 0.5 * (goal - hand) + 0.05 * rng.normal(size=(500, 3))
    blind = -0.5 * hand + 0.05 * rng.normal(size=(500, 3))
    assert bench.linear_r2(follows, np.c_[hand, goal]) > 0.95
    assert bench.linear_r2(follows, hand) < 0.6  # the hand alone explains only its own half
    assert bench.linear_r2(blind, np.c_[hand, goal]) == pytest.approx(bench.linear_r2(blind, hand), abs=0.01)
    assert bench.linear_r2(rng.normal(size=(500, 3)), goal) < 0.05
