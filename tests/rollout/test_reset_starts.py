"""Start states from seeded real resets: valid start dicts, deterministic for a seed, one env build per task."""

from __future__ import annotations

import numpy as np
import pytest
from support import requires_metaworld
from test_real import make_point_env

from rollout.real import RESET_START_SEED, reset_start_states
from wlarl.types import Observation


def _check_starts(starts, tasks, n, seed):
    assert len(starts) == len(tasks) * n
    assert [(s["task_name"], s["seed"]) for s in starts] == [(t, seed + i) for t in tasks for i in range(n)]
    for s in starts:
        assert s["image"].dtype == np.uint8 and s["image"].ndim == 3 and s["image"].shape[-1] == 3
        assert s["state"].dtype == np.float32 and s["state"].ndim == 1 and s["step_index"] == 0
        assert isinstance(s["instruction"], str) and s["instruction"]
    obs = Observation.from_dicts(starts)  # what the trainer batches them into
    assert len(obs) == len(starts) and obs.task_names == [s["task_name"] for s in starts]


def test_reset_starts_are_seeded_and_deterministic():
    a = reset_start_states(["a", "b"], 3, env_fn=make_point_env)
    _check_starts(a, ["a", "b"], 3, RESET_START_SEED)
    b = reset_start_states(["a", "b"], 3, env_fn=make_point_env)
    assert all(np.array_equal(x["state"], y["state"]) and np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["state"], a[1]["state"])  # different seeds, different starts
    other = reset_start_states(["a"], 1, seed=7, env_fn=make_point_env)
    assert other[0]["seed"] == 7 and not np.array_equal(other[0]["state"], a[0]["state"])


def test_reset_starts_reject_bad_arguments():
    with pytest.raises(ValueError, match="num_starts"):
        reset_start_states(["a"], 0, env_fn=make_point_env)
    with pytest.raises(ValueError, match="at least one task"):
        reset_start_states([], 2, env_fn=make_point_env)


@requires_metaworld
def test_metaworld_reset_starts_are_deterministic():
    kw = {"env_kwargs": {"image_size": 32}}
    a = reset_start_states(["reach-v3"], 2, **kw)
    b = reset_start_states(["reach-v3"], 2, **kw)
    _check_starts(a, ["reach-v3"], 2, RESET_START_SEED)
    assert a[0]["image"].shape == (32, 32, 3) and a[0]["full_state"].size > 0
    for x, y in zip(a, b):
        assert np.array_equal(x["state"], y["state"]) and np.array_equal(x["image"], y["image"])
    assert not np.allclose(a[0]["full_state"], a[1]["full_state"])  # seeds 100000 and 100001 place the goal apart
