"""benchmarks/bench_observability.py: what a policy can reach from where a goal marker falls, on synthetic geometry
where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from support import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_observability")


def _goals(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-0.1, 0.0, 0.0], [0.1, 0.3, 0.0], size=(n, 3))  # on the plane z = 0; y spans 30 cm


def test_a_marker_that_shows_the_whole_goal_locates_it(bench):
    goals = _goals(3000)
    pixels = goals[:, :2] * 100.0  # an overhead camera: x, y fully visible
    r = bench.measure(goals, pixels, radius=0.05, k=20)
    assert r["subpixel"] > 0.97 and r["pixel"] > 0.97  # a pixel is 1 cm: well inside the radius
    assert r["blind"] < 0.3


def test_a_lost_depth_caps_success_at_the_share_of_the_depth_range_the_radius_covers(bench):
    goals = _goals(3000)
    pixels = np.stack([goals[:, 0] * 100.0, np.zeros(len(goals))], axis=1)  # y along the camera ray: invisible
    r = bench.measure(goals, pixels, radius=0.05, k=40)
    # x is known; y is uniform over 30 cm, so the best guess is right within ±5 cm for about 10/30 of goals
    assert 0.2 < r["subpixel"] < 0.5, r
    assert r["consistent_extent_cm"] > 20  # the goals behind one marker position spread along y
    full = bench.measure(goals, goals[:, :2] * 100.0, radius=0.05, k=20)
    assert r["subpixel"] < full["subpixel"] - 0.4
