"""Meta-World v3 behind the contract: observation dict, upright non-blank images, seeds, task sets, vector envs."""

from __future__ import annotations

import numpy as np
import pytest
from support import requires_metaworld

from rollout.sims import MT10, MT50, make_env, make_vector_env, resolve_tasks, task_names
from rollout.sims.instructions import INSTRUCTIONS

pytestmark = [pytest.mark.metaworld, requires_metaworld]


def _red_centroid_column(image: np.ndarray) -> float:
    """Mean column of the red Sawyer arm's pixels."""
    im = image.astype(int)
    mask = (im[..., 0] > 90) & (im[..., 1] < 60) & (im[..., 2] < 60)
    return float(np.nonzero(mask)[1].mean())


def test_task_sets_and_names():
    assert len(MT10) == 10 and len(MT50) == 50 and set(MT10) <= set(MT50)
    assert task_names["MT10"] == MT10 and task_names["MT50"] == MT50
    assert resolve_tasks("MT10") == MT10
    assert resolve_tasks("reach-v3, push-v3") == ["reach-v3", "push-v3"]
    assert resolve_tasks(["MT10", "soccer-v3"])[-1] == "soccer-v3"


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown Meta-World task.*'reach-v9'.*reach-v3"):
        make_env("reach-v9")
    with pytest.raises(ValueError, match="valid cameras"):
        make_env("reach-v3", camera="nope")


def test_contract_observation_and_step():
    env = make_env("push-v3", max_episode_steps=5)
    obs, info = env.reset(seed=3)
    assert set(obs) == {"image", "state", "instruction"}
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
    assert obs["instruction"] in INSTRUCTIONS["push-v3"]
    assert info["success"] is False and info["full_state"].shape == (39,) and info["seed"] == 3
    np.testing.assert_allclose(obs["state"], info["full_state"][:4])
    assert env.task_name == "push-v3" and env.control_frequency == pytest.approx(80.0)
    assert env.action_space.shape == (4,) and env.action_space.low.min() == -1 and env.action_space.high.max() == 1
    assert env.observation_space.contains(obs)
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
        assert isinstance(info["success"], bool) and isinstance(reward, float)
        assert truncated == (t == 4) and not terminated
    env.close()


def test_images_upright_and_not_blank():
    # Verified by eye: after the 180° fix the black background is at the top and table/floor at the bottom.
    for task in ("reach-v3", "drawer-close-v3", "door-open-v3"):
        env = make_env(task)
        image = env.reset(seed=0)[0]["image"].astype(float)
        assert image.std() > 20, f"{task}: blank frame"
        assert image[-16:].mean() - image[:16].mean() > 40, f"{task}: frame is upside down"
        env.close()


def test_closeup_camera():
    env = make_env("push-v3", camera="closeup", image_size=32)
    image = env.reset(seed=0)[0]["image"].astype(float)
    assert image.shape == (32, 32, 3) and image.std() > 20
    assert image[-8:].mean() > image[:8].mean()  # table at the bottom
    env.close()


@pytest.mark.parametrize("camera", ["corner", "closeup"])
def test_project_lands_on_the_object(camera):
    # The puck's position, projected, falls on the puck's pixels in a segmentation render of the same scene (the
    # corner camera is rolled by 180°, the closeup one is a free camera).
    import mujoco

    env = make_env("push-v3", camera=camera, image_size=128).unwrapped
    _, info = env.reset(seed=3)
    pixel, px_per_cm = env.project(info["full_state"][4:7])
    renderer = env._renderer
    renderer.enable_segmentation_rendering()
    renderer.update_scene(env._env.data, camera=env._camera)
    seg = renderer.render()
    renderer.disable_segmentation_rendering()
    if env._rotate_180:
        seg = seg[::-1, ::-1]
    model = env._env.model
    puck = [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body("obj").id]
    rows, cols = np.nonzero(np.isin(seg[..., 0], puck) & (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)))
    assert len(rows) > 5
    assert abs(pixel[0] - (cols.mean() + 0.5)) < 2.0 and abs(pixel[1] - (rows.mean() + 0.5)) < 2.0
    # the puck is 4 cm across: its pixel extent matches the perspective scale to within a pixel or two
    assert abs((cols.max() - cols.min() + 1) - 4 * px_per_cm) < 3
    far = env.project(np.array([[0.0, 0.6, 0.0], [0.0, 0.6, 0.0]]))
    assert far[0].shape == (2, 2) and far[1].shape == (2,)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        env.project(np.zeros(2))
    env.close()


def test_reset_frame_draws_this_episodes_goal():
    # Meta-World moves the goal marker after its reset's last forward pass; the reset frame must show the new goal,
    # not the previous episode's, and the physics must not change (same states as before the kinematics pass).
    for task in ("reach-v3", "push-v3"):
        env = make_env(task, image_size=64).unwrapped
        for seed in (0, 1, 2):
            _, info = env.reset(seed=seed)
            np.testing.assert_allclose(env._env.data.site("goal").xpos, info["full_state"][36:39], atol=1e-6)
        env.close()
    a, b = make_env("push-v3", image_size=16), make_env("push-v3", image_size=16)
    a.reset(seed=5)
    b.reset(seed=9)
    b.reset(seed=5)  # a different previous episode
    for _ in range(10):
        act = np.array([0.5, -0.3, 0.2, 1.0], np.float32)
        np.testing.assert_array_equal(a.step(act)[4]["full_state"], b.step(act)[4]["full_state"])
    a.close()
    b.close()


def test_closeup_draws_objects_larger():
    scales = {}
    for camera in ("corner", "closeup"):
        env = make_env("reach-v3", camera=camera).unwrapped
        _, info = env.reset(seed=0)
        scales[camera] = env.project(info["full_state"][36:39])[1]
        env.close()
    assert scales["closeup"] > 1.3 * scales["corner"]


def test_images_not_mirrored():
    # Driving the hand towards +x (the robot's right, seen from the corner camera) moves the arm right in the frame;
    # a vertical flip alone would mirror it.
    env = make_env("reach-v3")
    cols = {}
    for dx in (-1.0, 1.0):
        env.reset(seed=0)
        for _ in range(30):
            obs = env.step(np.array([dx, 0, 0, 0], np.float32))[0]
        cols[dx] = _red_centroid_column(obs["image"])
    env.close()
    assert cols[1.0] > cols[-1.0] + 2


def test_seeds_reproducible_and_instructions_vary():
    env = make_env("push-v3", image_size=32)
    a, info_a = env.reset(seed=11)
    b, info_b = env.reset(seed=11)
    c, info_c = env.reset(seed=12)
    assert a["image"].shape == (32, 32, 3)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(info_a["full_state"], info_b["full_state"])
    assert not np.allclose(info_a["full_state"][4:7], info_c["full_state"][4:7])  # new puck position
    phrasings = {env.reset(seed=s)[0]["instruction"] for s in range(12)}
    assert len(phrasings) > 1 and phrasings <= set(INSTRUCTIONS["push-v3"])
    env.close()


def test_full_state_mode():
    env = make_env("reach-v3", state_mode="full", image_size=16)
    obs, info = env.reset(seed=0)
    assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["state"], info["full_state"])
    with pytest.raises(ValueError, match="state_mode"):
        make_env("reach-v3", state_mode="joint")
    env.close()


def test_check_env():
    from gymnasium.utils.env_checker import check_env

    env = make_env("reach-v3", image_size=16, max_episode_steps=10)
    check_env(env, skip_render_check=True)
    env.close()


def test_sync_vector_env_with_several_tasks():
    envs = make_vector_env(["reach-v3", "drawer-close-v3"], num_envs=3, image_size=16, max_episode_steps=4)
    obs, info = envs.reset(seed=0)
    assert obs["image"].shape == (3, 16, 16, 3) and obs["state"].shape == (3, 4)
    assert len(obs["instruction"]) == 3 and obs["instruction"][1] in INSTRUCTIONS["drawer-close-v3"]
    assert envs.call("task_name") == ("reach-v3", "drawer-close-v3", "reach-v3")
    for _ in range(4):
        obs, reward, terminated, truncated, info = envs.step(np.zeros((3, 4), np.float32))
    assert truncated.all() and info["success"].shape == (3,)
    envs.close()
    with pytest.raises(ValueError, match="vectorization"):
        make_vector_env("reach-v3", vectorization="threads")


def test_async_vector_env():
    envs = make_vector_env(["reach-v3", "push-v3"], vectorization="async", image_size=16)
    obs, _ = envs.reset(seed=0)
    assert obs["image"].shape == (2, 16, 16, 3) and obs["image"].std() > 0
    obs, *_ = envs.step(np.zeros((2, 4), np.float32))
    assert obs["state"].dtype == np.float32
    envs.close()


def _private_frame(env) -> np.ndarray:
    """env's current frame from a renderer of its own model, with the env's render flags and 180° fix."""
    import mujoco

    renderer = mujoco.Renderer(env._env.model, env.image_size, env.image_size)
    try:
        flags = mujoco.mjtRndFlag
        for flag in (flags.mjRND_SHADOW, flags.mjRND_REFLECTION, flags.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        renderer.update_scene(env._env.data, camera=env._camera)
        frame = renderer.render()
    finally:
        renderer.close()
    return np.ascontiguousarray(frame[::-1, ::-1] if env._rotate_180 else frame)


@pytest.mark.parametrize("task", ["reach-v3", "drawer-close-v3"])  # drawer: the reset moves bodies of the model
def test_envs_of_a_task_share_one_renderer_that_draws_each_ones_own_frame(task):
    a, b = make_env(task, image_size=24), make_env(task, image_size=24)
    a.reset(seed=0)
    b.reset(seed=5)  # another layout (goal, object and, for the drawer, the model's body positions)
    for _ in range(6):
        a.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
        b.step(np.array([0.0, -1.0, 1.0, 1.0], np.float32))
    assert a._renderer is not None and a._renderer is b._renderer  # one renderer per (task, image size)
    for env in (a, b):
        np.testing.assert_array_equal(env.render(), _private_frame(env))
    assert not np.array_equal(a.render(), b.render())
    a.close()  # closing one env leaves the shared renderer to the other
    b.step(np.zeros(4, np.float32))
    np.testing.assert_array_equal(b.render(), _private_frame(b))
    b.close()


def test_refresh_frame_renders_the_current_state_without_per_step_rendering():
    lazy, eager = make_env("reach-v3", image_size=16), make_env("reach-v3", image_size=16)
    first = lazy.reset(seed=3)[0]["image"]
    eager.reset(seed=3)
    lazy.render_images = False
    action = np.array([1.0, 1.0, -1.0, 0.0], np.float32)
    for _ in range(10):
        stale = lazy.step(action)[0]["image"]
        shown = eager.step(action)[0]["image"]
    np.testing.assert_array_equal(stale, first)  # not rendered while stepping
    frame = lazy.refresh_frame()
    assert not np.array_equal(frame, first)  # the hand moved
    np.testing.assert_array_equal(frame, shown)  # what a rendering env shows in the same state
    np.testing.assert_array_equal(lazy.render(), shown)  # and the frame the env now holds
    lazy.close()
    eager.close()


def test_sim_state_is_equal_after_equal_seeded_resets():
    a, b = make_env("push-v3", image_size=16), make_env("push-v3", image_size=16)
    a.reset(seed=21)
    b.reset(seed=21)
    s = a.sim_state()
    m = a._env.model
    assert s.dtype == np.float64 and s.shape == (m.nq + m.nv + 7 * m.nmocap,)
    np.testing.assert_array_equal(s, b.sim_state())
    b.reset(seed=22)
    assert not np.array_equal(s, b.sim_state())  # another puck and goal
    a.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    assert not np.array_equal(s, a.sim_state())  # the state moves with the env
    a.reset(seed=21)
    np.testing.assert_array_equal(s, a.sim_state())  # and a reset with the seed rebuilds it
    a.close()
    b.close()
