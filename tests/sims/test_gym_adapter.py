"""The generic gymnasium adapter on a real env (gym-pusht), not a mock."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest

from rollout.sims import make_env
from rollout.sims.gym_adapter import GymAdapter

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gym_pusht") is None, reason="needs gym-pusht: pip install -e '.[pusht]'"
)
PHRASES = ["Push the T-shaped block onto the target.", "Move the T block to the goal."]


def _pusht() -> GymAdapter:
    import gym_pusht  # noqa: F401 - registers gym_pusht/PushT-v0

    return GymAdapter(
        gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos", max_episode_steps=3),
        obs_map={"image": "pixels", "state": "agent_pos"},
        instruction=PHRASES,
        normalize_actions=True,
    )


def test_pusht_contract():
    env = _pusht()
    obs, info = env.reset(seed=0)
    assert set(obs) == {"image", "state", "instruction"}
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (96, 96, 3) and obs["image"].std() > 0
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (2,)
    assert obs["instruction"] in PHRASES and info["success"] is False and info["seed"] == 0
    assert env.task_name == "gym_pusht/PushT-v0" and env.control_frequency == 10.0
    assert env.observation_space.contains(obs)
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
    truncated = False
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 1.0], np.float32))
        assert isinstance(info["success"], bool) and isinstance(reward, float)
    assert truncated
    # actions were rescaled to the env's [0, 512] box: +1 drives the agent towards (512, 512)
    assert obs["state"].min() > 300
    again, _ = env.reset(seed=0)
    np.testing.assert_array_equal(again["image"], env.reset(seed=0)[0]["image"])
    env.close()


def test_make_env_gym_prefix_and_bad_mapping():
    import gym_pusht  # noqa: F401

    env = make_env(
        "gym:gym_pusht/PushT-v0",
        env_kwargs={"obs_type": "pixels_agent_pos"},
        obs_map={"image": "pixels", "state": "agent_pos"},
        instruction="Push the T onto the target.",
    )
    assert env.reset(seed=1)[0]["instruction"] == "Push the T onto the target."
    env.close()
    with pytest.raises(KeyError, match="image key 'rgb' not in observation"):
        GymAdapter(gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos"), obs_map={"image": "rgb"})
    with pytest.raises(ValueError, match="unknown key"):
        GymAdapter(gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos"), obs_map={"pixels": "pixels"})
