"""benchmarks/bench_frame_actions.py: how close a chunk is to the expert's (direction, motion R², MSE)."""

from __future__ import annotations

import numpy as np
import pytest
from support import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_frame_actions")


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


def test_hand_knn_predicts_what_the_hand_decides_and_not_the_goal(bench):
    rng = np.random.default_rng(0)

    def frames(n, by_goal):
        full = rng.uniform(-1, 1, (n, 39))
        motion = full[:, 36:39] if by_goal else -full[:, :3]
        return {"full_state": full, "action": np.repeat(motion[:, None], 4, axis=1)}

    assert bench.hand_knn_r2(frames(2000, False), frames(300, False)) > 0.8  # follows the hand: found from it
    assert bench.hand_knn_r2(frames(2000, True), frames(300, True)) < 0.05  # follows the goal: not


@pytest.mark.metaworld
def test_closed_loop_scores_the_recorded_actions_against_the_expert(bench, tmp_path):
    pytest.importorskip("metaworld")
    from rollout.experts import ScriptedExpert, run_episode
    from rollout.sims.metaworld import MetaWorldEnv
    from wlarl.data import write_episodes

    env = MetaWorldEnv("reach-v3", image_size=32, max_episode_steps=30)
    try:
        ep = run_episode(env, ScriptedExpert("reach-v3", "clean"), seed=7)
    finally:
        env.close()
    backwards = {**ep, "action": -ep["action"], "seed": 8}
    for name, eps in (("expert", [ep]), ("backwards", [backwards])):
        write_episodes(eps, tmp_path / name, {"image_size": 32, "camera": "corner", "tasks": ["reach-v3"]})
    (same,) = bench.closed_loop(str(tmp_path / "expert"))
    (opposite,) = bench.closed_loop(str(tmp_path / "backwards"))
    assert same["task"] == "reach-v3" and same["states"] == len(ep["action"])
    assert same["cos_median"] == pytest.approx(1.0, abs=1e-4) and opposite["cos_median"] == pytest.approx(
        -1.0, abs=1e-4
    )
    assert sum(v[1] for k, v in same.items() if k.endswith("cm")) == same["states"]  # every state in one band
