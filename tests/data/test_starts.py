"""Start states inside episodes: keyframes every `stride` steps, rebuildable from task, seed and step."""

from __future__ import annotations

import numpy as np
import pytest

from wlarl.data import keyframe_states, load_episodes, start_states, task_outcomes, write_episodes
from wlarl.types import Observation


def _dataset(tmp_path, episode_factory):
    eps = [
        episode_factory(t=10, seed=5, task="reach-v3", success_at=None),  # never succeeds
        episode_factory(t=9, seed=6, task="push-v3", success_at=3),  # observation 4 on is solved
    ]
    write_episodes(eps, tmp_path / "ds", {"camera": "corner"})
    return load_episodes(tmp_path / "ds")


def _valid(starts):
    for s in starts:
        assert s["image"].dtype == np.uint8 and s["image"].shape == (8, 8, 3)
        assert s["state"].dtype == np.float32 and s["state"].shape == (4,)
        assert {"instruction", "task_name", "seed", "episode_index", "full_state"} <= set(s)
    assert len(Observation.from_dicts(starts)) == len(starts)


def test_keyframes_every_stride_steps_up_to_the_first_success(tmp_path, episode_factory):
    ds = _dataset(tmp_path, episode_factory)
    starts = keyframe_states(ds, stride=2)
    _valid(starts)
    got = [(s["episode_index"], s["step_index"], s["task_name"], s["seed"]) for s in starts]
    # episode 0: steps 0..8 (step 10 is the final observation, no action follows); episode 1: frames after the
    # success of action 3 are left out
    assert got == [(0, k, "reach-v3", 5) for k in (0, 2, 4, 6, 8)] + [(1, k, "push-v3", 6) for k in (0, 2)]
    # the frame is the recorded observation of that step (synthetic frames hold their step index as pixel value)
    assert all(int(s["image"][0, 0, 0]) == s["step_index"] and s["state"][0] == s["step_index"] for s in starts)


def test_keyframe_stride_one_and_first_frames(tmp_path, episode_factory):
    ds = _dataset(tmp_path, episode_factory)
    every = keyframe_states(ds, stride=1)
    assert [s["step_index"] for s in every if s["episode_index"] == 1] == [0, 1, 2, 3]
    assert len([s for s in every if s["episode_index"] == 0]) == 10
    first = start_states(ds)
    _valid(first)
    assert [s["seed"] for s in first] == [5, 6] and all(int(s["image"][0, 0, 0]) == 0 for s in first)
    with pytest.raises(ValueError, match="stride"):
        keyframe_states(ds, stride=0)


def test_task_outcomes_count_each_episode_once_by_whether_any_step_succeeded(tmp_path, episode_factory):
    eps = [
        episode_factory(t=10, seed=5, task="reach-v3", success_at=None),
        episode_factory(t=9, seed=6, task="push-v3", success_at=3),  # success from step 3 on: one success
        episode_factory(t=6, seed=7, task="push-v3", success_at=None),
        episode_factory(t=4, seed=8, task="reach-v3", success_at=2),
        episode_factory(t=5, seed=9, task="reach-v3", success_at=4),
    ]
    write_episodes(eps, tmp_path / "ds", {"camera": "corner"})
    assert task_outcomes(load_episodes(tmp_path / "ds")) == {"push-v3": (1, 2), "reach-v3": (2, 3)}
