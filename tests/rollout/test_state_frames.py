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


def test_expert_chunks_label_the_same_frames_with_the_clean_experts_next_actions():
    from rollout.experts import ScriptedExpert
    from rollout.sims.metaworld import MetaWorldEnv

    plain = state_frames("push-v3", range(200, 204), image_size=32, random_steps=10, progress=False)
    got = state_frames("push-v3", range(200, 204), image_size=32, random_steps=10, action_chunk=6, progress=False)
    for key in ("image", "state", "full_state"):  # the labels are taken after the frame: the frames are unchanged
        np.testing.assert_array_equal(got[key], plain[key])
    assert "action" not in plain and got["action"].shape == (4, 6, 4) and got["action"].dtype == np.float32
    assert got["subtask"] == ["reach the puck"] * 4  # the hand starts away from the puck
    # the chunk is what the clean expert does from the frame's state, step after step
    env, expert = MetaWorldEnv("push-v3", image_size=32, render_images=False), ScriptedExpert("push-v3")
    try:
        for i, seed in enumerate(range(200, 204)):
            env.reset(seed=seed)
            rng = np.random.default_rng(seed)
            for _ in range(int(rng.integers(0, 11))):
                env.step(rng.uniform(-1.0, 1.0, 4).astype(np.float32))
            np.testing.assert_array_equal(env.full_state, got["full_state"][i])
            for t in range(6):
                action = expert.clean_action(env.full_state)
                np.testing.assert_array_equal(got["action"][i, t], action)
                env.step(action)
    finally:
        env.close()


def test_expert_steps_take_frames_along_the_way_to_the_goal():
    seeds = range(300, 310)
    reset = state_frames("reach-v3", seeds, image_size=32, progress=False)
    along = state_frames("reach-v3", seeds, image_size=32, expert_steps=40, progress=False)
    again = state_frames("reach-v3", seeds, image_size=32, expert_steps=40, progress=False)
    np.testing.assert_array_equal(along["image"], again["image"])

    def to_goal(frames):
        return np.linalg.norm(frames["full_state"][:, :3] - frames["full_state"][:, GOAL], axis=1)

    closer = to_goal(reset) - to_goal(along)
    assert (closer > 0.02).sum() >= 7 and (closer > -1e-3).all(), closer  # the expert heads for the goal
    assert along["subtask"] == ["move the gripper to the goal"] * 10


def test_target_steps_spread_the_hand_over_the_workspace():
    seeds = range(400, 440)
    near = state_frames("reach-v3", seeds, image_size=32, random_steps=10, progress=False)
    spread = state_frames("reach-v3", seeds, image_size=32, random_steps=10, target_steps=40, progress=False)
    again = state_frames("reach-v3", seeds, image_size=32, random_steps=10, target_steps=40, progress=False)
    np.testing.assert_array_equal(spread["image"], again["image"])
    np.testing.assert_allclose(spread["full_state"][:, GOAL], near["full_state"][:, GOAL], atol=1e-6)  # same layouts
    assert (spread["state"][:, :3].std(0) > 2 * near["state"][:, :3].std(0)).all()
    # the hand's offset from the start does not point at the goal
    move, to_goal = spread["state"][:, :3] - near["state"][:, :3], spread["full_state"][:, GOAL] - near["state"][:, :3]
    cos = (move * to_goal).sum(1) / (np.linalg.norm(move, axis=1) * np.linalg.norm(to_goal, axis=1) + 1e-9)
    assert abs(np.median(cos[np.linalg.norm(move, axis=1) > 0.02])) < 0.5


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="at least one seed"):
        state_frames("reach-v3", [], progress=False)
    with pytest.raises(ValueError, match="random_steps=-1"):
        state_frames("reach-v3", [0], random_steps=-1, progress=False)
    with pytest.raises(ValueError, match="expert_steps=-2"):
        state_frames("reach-v3", [0], expert_steps=-2, progress=False)
    with pytest.raises(ValueError, match="target_steps=-3"):
        state_frames("reach-v3", [0], target_steps=-3, progress=False)
    with pytest.raises(ValueError, match=r"= 160 steps may run past the episode's 150"):
        state_frames("reach-v3", [0], random_steps=100, expert_steps=52, action_chunk=8, progress=False)


def test_cached_frames_are_rendered_once_then_loaded_unchanged(tmp_path, monkeypatch):
    import rollout.collect as collect

    opts = {"image_size": 32, "random_steps": 5, "action_chunk": 3}
    first = collect.cached_state_frames("push-v3", [8, 9], tmp_path, progress=False, **opts)
    files = list(tmp_path.glob("*.safetensors"))
    assert [f.name for f in files] == [f"push-v3-{collect.state_frames_key('push-v3', [8, 9], **opts)}.safetensors"]
    stamp = files[0].stat().st_mtime_ns

    def no_render(*a, **k):
        raise AssertionError("rendered although the frames are cached")

    monkeypatch.setattr(collect, "state_frames", no_render)
    again = collect.cached_state_frames("push-v3", range(8, 10), tmp_path, progress=False, **opts)
    assert sorted(again) == sorted(first) and files[0].stat().st_mtime_ns == stamp
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            assert again[key].dtype == value.dtype
            np.testing.assert_array_equal(again[key], value)
        else:
            assert again[key] == value
    # other options are other frames: a miss renders (here: fails loudly)
    with pytest.raises(AssertionError, match="rendered although"):
        collect.cached_state_frames("push-v3", [8, 9], tmp_path, progress=False, **(opts | {"random_steps": 6}))
    # no cache directory: always rendered, nothing written
    with pytest.raises(AssertionError, match="rendered although"):
        collect.cached_state_frames("push-v3", [8, 9], None, progress=False, **opts)


def test_cache_key_follows_what_the_frames_depend_on(monkeypatch):
    from rollout.collect import state_frames_key

    key = state_frames_key("reach-v3", [1, 2, 3], random_steps=4)
    assert key == state_frames_key("reach-v3", range(1, 4), random_steps=4, image_size=64, progress=True)
    others = [
        state_frames_key("push-v3", [1, 2, 3], random_steps=4),
        state_frames_key("reach-v3", [1, 2, 4], random_steps=4),
        state_frames_key("reach-v3", [1, 2, 3], random_steps=5),
        state_frames_key("reach-v3", [1, 2, 3], random_steps=4, camera="closeup"),
        state_frames_key("reach-v3", [1, 2, 3], random_steps=4, action_chunk=2),
    ]
    monkeypatch.setenv("MUJOCO_GL", "osmesa")  # another renderer may draw other pixels
    others.append(state_frames_key("reach-v3", [1, 2, 3], random_steps=4))
    assert len({key, *others}) == len(others) + 1
    with pytest.raises(TypeError):
        state_frames_key("reach-v3", [1], random_stpes=4)


def test_an_unreadable_cache_file_is_rendered_again_and_replaced(tmp_path, caplog):
    from rollout.collect import cached_state_frames, load_state_frames, state_frames_key

    path = tmp_path / f"reach-v3-{state_frames_key('reach-v3', [3], image_size=32)}.safetensors"
    path.write_bytes(b"half a file")
    with caplog.at_level("WARNING", logger="rollout.collect"):
        got = cached_state_frames("reach-v3", [3], tmp_path, image_size=32, progress=False)
    assert "unreadable" in caplog.text and str(path) in caplog.text
    np.testing.assert_array_equal(got["image"], state_frames("reach-v3", [3], image_size=32, progress=False)["image"])
    np.testing.assert_array_equal(load_state_frames(path)["full_state"], got["full_state"])
    assert not list(tmp_path.glob("*.tmp"))


def test_a_file_without_frames_is_refused_by_name(tmp_path):
    from safetensors.numpy import save_file

    from rollout.collect import load_state_frames

    path = tmp_path / "other.safetensors"
    save_file({"image": np.zeros((1, 2, 2, 3), np.uint8)}, str(path), metadata={"subtask": "[]"})
    with pytest.raises(ValueError, match=r"not a state-frames file .*'full_state', 'seed', 'state', 'instruction'"):
        load_state_frames(path)
