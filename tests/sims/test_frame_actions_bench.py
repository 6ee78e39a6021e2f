"""benchmarks/bench_frame_actions.py: how close a chunk is to the expert's (direction, motion R², MSE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script(
        Path(__file__).resolve().parents[2] / "benchmarks" / "bench_frame_actions.py", "bench_frame_actions_cli"
    )


def test_chunk_agreement_tells_the_expert_from_a_scaled_copy_and_from_noise(bench):
    rng = np.random.default_rng(0)
    expert = rng.uniform(-1, 1, (300, 8, 4))
    same = bench.chunk_agreement(expert, expert)
    assert same == pytest.approx({"cos_median": 1.0, "r2_motion": 1.0, "mse": 0.0})
    half = bench.chunk_agreement(0.5 * expert, expert)  # the right direction, half the motion
    assert half["cos_median"] == pytest.approx(1.0) and 0.5 < half["r2_motion"] < 0.9 and half["mse"] > 0
    noise = bench.chunk_agreement(rng.uniform(-1, 1, expert.shape), expert)
    assert abs(noise["cos_median"]) < 0.15 and noise["r2_motion"] < 0
    with pytest.raises(ValueError, match=r"expected two \[N, H, A ≥ 3\] arrays"):
        bench.chunk_agreement(expert[:, :, :2], expert[:, :, :2])


@pytest.mark.metaworld
def test_the_goal_blind_expert_loses_what_the_goal_decides(bench):
    pytest.importorskip("metaworld")
    from rollout.collect import state_frames

    frames = state_frames("reach-v3", range(20020, 20060), 32, expert_steps=20, action_chunk=1, progress=False)
    blind = bench.goal_blind_actions("reach-v3", frames["full_state"])
    assert blind.shape == (40, 1, 4)
    assert bench.chunk_agreement(blind, frames["action"])["r2_motion"] < 0.8  # the goal moves the expert's action
    one_goal = np.repeat(frames["full_state"][:1], 3, axis=0)  # every goal the same: the mean is the goal
    np.testing.assert_allclose(bench.goal_blind_actions("reach-v3", one_goal)[:, 0], frames["action"][[0, 0, 0], 0],
                               atol=1e-5)  # fmt: skip
