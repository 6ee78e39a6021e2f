"""`rollout.collect.state_frames`: one frame per seeded layout, with the simulator state it shows (the training data
of the backbone state probe on fresh layouts, `sft_wla --meta_state_frames`)."""

from __future__ import annotations

import numpy as np
import pytest
from support import requires_metaworld

from rollout.collect import state_frames

pytestmark = [pytest.mark.metaworld, requires_metaworld]

GOAL = slice(36, 39)


def test_reset_frames_are_the_resets_of_their_seeds():
    from rollout.sims.metaworld import MetaWorldEnv

    got = state_frames("reach-v3", [5, 6, 7], image_size=32, progress=False)
    assert got["image"].shape == (3, 32, 32, 3) and got["image"].dtype == np.uint8
    assert got["state"].shape == (3, 4) and got["full_state"].shape == (3, 39)
    assert got["seed"].tolist() == [5, 6, 7] and len(got["instruction"]) == 3
    env = MetaWorldEnv("reach-v3", image_size=32)
    try:
        for i, seed in enumerate([5, 6, 7]):
            obs, info = env.reset(seed=seed)
            np.testing.assert_array_equal(got["image"][i], obs["image"])
            np.testing.assert_array_equal(got["full_state"][i], info["full_state"])
            assert got["instruction"][i] == obs["instruction"]
    finally:
        env.close()
    # every frame a new goal
    assert len({tuple(np.round(g, 4)) for g in got["full_state"][:, GOAL]}) == 3


def test_random_steps_move_the_arm_and_are_deterministic():
    reset = state_frames("reach-v3", range(100, 106), image_size=32, progress=False)
    moved = state_frames("reach-v3", range(100, 106), image_size=32, random_steps=20, progress=False)
    again = state_frames("reach-v3", range(100, 106), image_size=32, random_steps=20, progress=False)
    for key in ("image", "state", "full_state"):
        np.testing.assert_array_equal(moved[key], again[key])
    # same layouts (goals), other hand positions and frames
    np.testing.assert_allclose(moved["full_state"][:, GOAL], reset["full_state"][:, GOAL], atol=1e-6)
    hand_shift = np.linalg.norm(moved["state"][:, :3] - reset["state"][:, :3], axis=1)
    assert (hand_shift > 0.01).sum() >= 3, hand_shift
    assert not np.array_equal(moved["image"], reset["image"])
    # the frame shows the state it is paired with: the hand's image moves with it
    assert all(
        np.abs(moved["image"][i].astype(int) - reset["image"][i]).sum() > 0 for i in np.flatnonzero(hand_shift > 0.01)
    )


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="at least one seed"):
        state_frames("reach-v3", [], progress=False)
    with pytest.raises(ValueError, match="random_steps=-1"):
        state_frames("reach-v3", [0], random_steps=-1, progress=False)
