"""Meta-World v3 behind the wlarl real-simulator contract (needs the `metaworld` extra).

Observation dict: `image` uint8 [H, W, 3] upright, `state` float32 [S] (hand xyz + gripper opening, S=4; or the
full 39-d Meta-World observation with `state_mode="full"`), `instruction` str. `info["success"]` after every
step; `info["full_state"]` always holds the 39-d observation (goal position included), which the scripted
experts read. Action Box(-1, 1, (4,)): hand xyz delta and gripper effort.

Rendering: a `mujoco.Renderer` of our own, built after switching off multisampling, shadows and reflections
(≈3x faster per frame than Meta-World's default renderer). Meta-World's cameras are mounted rolled by 180°; we
rotate such frames back by 180° (a vertical flip alone would give a mirror image).
"""

from __future__ import annotations

import atexit
import os
import string
import weakref
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

# Meta-World's own MT10 and the 50 v3 task names, spelled out so that listing them needs no MuJoCo import.
MT10: list[str] = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]
MT50: list[str] = sorted(
    MT10
    + [
        "assembly-v3",
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "button-press-topdown-wall-v3",
        "button-press-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "dial-turn-v3",
        "disassemble-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-unlock-v3",
        "hand-insert-v3",
        "faucet-open-v3",
        "faucet-close-v3",
        "hammer-v3",
        "handle-press-side-v3",
        "handle-press-v3",
        "handle-pull-side-v3",
        "handle-pull-v3",
        "lever-pull-v3",
        "pick-place-wall-v3",
        "pick-out-of-hole-v3",
        "push-back-v3",
        "plate-slide-v3",
        "plate-slide-side-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "peg-unplug-side-v3",
        "soccer-v3",
        "stick-push-v3",
        "stick-pull-v3",
        "push-wall-v3",
        "reach-wall-v3",
        "shelf-place-v3",
        "sweep-into-v3",
        "sweep-v3",
    ]
)
TASK_SETS: dict[str, list[str]] = {"MT10": MT10, "MT50": MT50}
# Free (look-at) cameras of our own, besides the model's named cameras (free cameras are never rolled, so always
# upright). `closeup` looks at the table from the robot's front-right, about twice as close as `corner`, so small
# objects (pucks, goals) cover about twice as many pixels.
FREE_CAMERAS: dict[str, dict[str, Any]] = {
    "closeup": {"lookat": (0.0, 0.62, 0.12), "distance": 1.15, "azimuth": 145.0, "elevation": -35.0},
}
STATE_MODES = ("hand", "full")
STATE_LAYOUT = {"hand": ["hand_x", "hand_y", "hand_z", "gripper_opening"], "full": "metaworld 39-d observation"}
FULL_STATE_DIM = 39
# Characters an instruction may contain (gymnasium's Text space defaults to alphanumerics only).
INSTRUCTION_CHARSET = frozenset(string.ascii_letters + string.digits + " .,;:'!?-()")

# Renderers still open at interpreter exit are closed before MuJoCo's own exit hook terminates EGL (otherwise
# their __del__ prints EGL errors). Our hook is registered after MuJoCo's, so it runs first.
_OPEN_ENVS: weakref.WeakSet = weakref.WeakSet()
_EXIT_HOOK = []
# One renderer per (task, image size) and process, shared by every env of that task: a scene is built from the
# data's body, geom, site and camera poses, which every env computes with its own model, so rendering env B's data
# with env A's renderer gives B's frame exactly (checked for the default tasks in tests/sims). A renderer costs about
# twice the memory of the env itself, which matters when a worker runs many episodes at once.
_SHARED_RENDERERS: dict[tuple[str, int], Any] = {}


def _close_open_renderers() -> None:
    for env in list(_OPEN_ENVS):
        env._close_renderer()
    for renderer in _SHARED_RENDERERS.values():
        renderer.close()
    _SHARED_RENDERERS.clear()


_IMPORT_HINT = "Meta-World is not installed: pip install -e '.[metaworld]' (and set MUJOCO_GL=egl or osmesa)"


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from a task set name (`MT10`, `MT50`), one task, a comma-separated string or a list.

    Raises:
        ValueError: naming the unknown task(s) and listing the valid names.
    """
    if isinstance(tasks, str):
        if tasks in TASK_SETS:
            return list(TASK_SETS[tasks])
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        names = []
        for t in tasks:
            names.extend(TASK_SETS.get(t, [t]))
    if not names:
        raise ValueError(f"no Meta-World task given; use a task set {sorted(TASK_SETS)} or task names {MT50}")
    unknown = [t for t in names if t not in MT50]
    if unknown:
        raise ValueError(
            f"unknown Meta-World task(s) {unknown}; valid task sets: {sorted(TASK_SETS)}; valid task names: {MT50}"
        )
    return names


def _import_metaworld() -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld.env_dict as env_dict
    except ImportError as e:
        raise ImportError(_IMPORT_HINT) from e
    return env_dict


def simulator_version() -> str:
    """`metaworld <version> / mujoco <version>`."""
    from importlib.metadata import version

    return f"metaworld {version('metaworld')} / mujoco {version('mujoco')}"


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with image + state + instruction observations.

    Args:
        task_name: a v3 task name such as `reach-v3` (see `MT50`).
        image_size: side of the square camera frame in pixels.
        camera: a camera of the Meta-World model (`corner`, `corner2`, `corner3`, `corner4`, `topview`, ...) or a
            free camera of `FREE_CAMERAS` (`closeup`).
        state_mode: `hand` (float32 [4]: hand xyz, gripper opening) or `full` (float32 [39]).
        max_episode_steps: episodes are truncated after this many steps (Meta-World's own horizon is 500).
        terminate_on_success: end the episode (terminated=True) at the first successful step.
        render_images: render `image` at every step; False gives black frames (state-only rollouts, faster).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task_name: str,
        image_size: int = 64,
        camera: str = "corner",
        state_mode: str = "hand",
        max_episode_steps: int = 150,
        terminate_on_success: bool = False,
        render_images: bool = True,
        render_mode: str | None = "rgb_array",
    ) -> None:
        (task_name,) = resolve_tasks([task_name])
        if state_mode not in STATE_MODES:
            raise ValueError(f"state_mode={state_mode!r}: expected one of {STATE_MODES}")
        if image_size < 8:
            raise ValueError(f"image_size={image_size}: expected at least 8 pixels")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps}: expected a positive number of steps")
        env_dict = _import_metaworld()
        import mujoco

        self._mujoco = mujoco
        self.task_name = task_name
        self.image_size = int(image_size)
        self.camera = camera
        self.state_mode = state_mode
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.render_images = render_images
        self.render_mode = render_mode

        env = env_dict.ALL_V3_ENVIRONMENTS[task_name]()
        # Goal-observable and seeded: the 39-d observation carries the goal (the scripted experts need it) and
        # `env.seed(s)` followed by `reset()` draws the object/goal layout from seed s.
        env._partially_observable = False
        del env.sawyer_observation_space  # cached property, recomputed with the goal bounds
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.max_path_length = max(env.max_path_length, self.max_episode_steps)
        self._env = env

        model = env.model
        names = [model.camera(i).name for i in range(model.ncam)]
        if camera not in names and camera not in FREE_CAMERAS:
            valid = names + sorted(FREE_CAMERAS)
            raise ValueError(f"camera={camera!r} is not a camera of {task_name}; valid cameras: {valid}")
        self._camera_id = names.index(camera) if camera in names else -1
        # Speed: no multisampling, no shadow map, no reflections; must happen before the first render.
        model.vis.quality.offsamples = 0
        model.vis.quality.shadowsize = 0
        model.mat_reflectance[:] = 0.0
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.image_size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.image_size)
        self._renderer = None
        self._rotate_180 = False
        self._camera: Any = self._camera_id

        self.control_frequency = 1.0 / (model.opt.timestep * env.frame_skip)  # Hz (80 for Meta-World)
        s = self.image_size
        state_dim = 4 if state_mode == "hand" else FULL_STATE_DIM
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (s, s, 3), dtype=np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), dtype=np.float32),
                "instruction": gym.spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self.episode_seed: int | None = None
        self.instruction = ""
        self._full_state = np.zeros(FULL_STATE_DIM, np.float32)
        self._image = np.zeros((s, s, 3), np.uint8)
        self._t = 0

    # ---------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Reset to the layout drawn from `seed` (a fresh seed from the env's generator when None)."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        from rollout.sims.instructions import instruction_for

        self.episode_seed = int(seed)
        self._env.seed(self.episode_seed)
        full, _ = self._env.reset()
        # Meta-World moves the goal marker (`model.site("goal").pos`) after its last forward pass of the reset, so the
        # marker's world position is stale until the next step: the reset frame would draw the previous episode's
        # goal (10-30 cm off). The kinematics pass recomputes positions only; rollouts stay bitwise the same.
        self._mujoco.mj_kinematics(self._env.model, self._env.data)
        self._t = 0
        self.instruction = instruction_for(self.task_name, self.episode_seed)
        obs = self._observe(full)
        info = {"success": False, "seed": self.episode_seed, "full_state": self._full_state.copy()}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,):
            raise ValueError(f"{self.task_name}: expected an action of shape (4,), got {action.shape}")
        if self.episode_seed is None:
            raise RuntimeError(f"{self.task_name}: call reset() before step()")
        full, reward, _, _, inner = self._env.step(np.clip(action, -1.0, 1.0))
        self._t += 1
        success = bool(inner.get("success", 0.0) > 0.5)
        obs = self._observe(full)
        terminated = success and self.terminate_on_success
        truncated = self._t >= self.max_episode_steps
        info = {k: float(v) for k, v in inner.items() if np.isscalar(v) and k != "success"}
        info.update(success=success, seed=self.episode_seed, full_state=self._full_state.copy())
        return obs, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The upright frame of the current observation, uint8 [H, W, 3]."""
        return self._image.copy()

    def close(self) -> None:
        self._close_renderer()
        self._env.close()

    def _close_renderer(self) -> None:
        if self._renderer is not None:
            if self._renderer is not _SHARED_RENDERERS.get((self.task_name, self.image_size)):
                self._renderer.close()
            self._renderer = None

    # ---------------------------------------------------------------- helpers

    def refresh_frame(self) -> np.ndarray:
        """Render the current state now (also when `render_images` is off) and return the upright frame."""
        self._image = self._render_frame()
        return self._image.copy()

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where world points land in the (upright) camera frame, and how large things there are drawn.

        Args:
            points: float [..., 3], world positions (e.g. `full_state[4:7]`, the object; `[36:39]`, the goal).

        Returns:
            pixels: float [..., 2], (column, row) in the frame that `render()` returns; outside [0, image_size) is
                off screen. NaN for points behind the camera.
            px_per_cm: float [...], how many pixels one centimetre at that point spans (perspective scale).
        """
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1:] != (3,):
            raise ValueError(f"{self.task_name}: project() expects points of shape [..., 3], got {points.shape}")
        if self._renderer is None:
            self._render_frame()
        # The GL cameras of the scene last rendered (two stereo eyes; a mono frame is drawn from their mean): eye
        # position, view axes and the frustum at the near plane.
        cam = self._renderer.scene.camera[0]
        eyes = self._renderer.scene.camera
        pos, forward, up = (
            np.mean([np.asarray(getattr(c, k), dtype=np.float64) for c in eyes], axis=0)
            for k in ("pos", "forward", "up")
        )
        right = np.cross(forward, up)
        rel = points - pos
        depth = rel @ forward
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(depth > 0, cam.frustum_near / depth, np.nan)
        x, y = (rel @ right) * scale, (rel @ up) * scale
        s = self.image_size
        # A frustum width of 0 means "from the viewport's aspect ratio" (1: square frames).
        half = cam.frustum_width or 0.5 * (cam.frustum_top - cam.frustum_bottom)
        left, width = cam.frustum_center - half, 2.0 * half
        col = (x - left) / width * s
        row = (cam.frustum_top - y) / (cam.frustum_top - cam.frustum_bottom) * s
        if self._rotate_180:
            col, row = s - col, s - row
        px_per_cm = 0.01 * scale / width * s
        return np.stack([col, row], axis=-1), px_per_cm

    def sim_state(self) -> np.ndarray:
        """float64 [qpos + qvel + mocap pos/quat]: the MuJoCo state, to check that two resets are the same state."""
        d = self._env.data
        return np.concatenate([d.qpos, d.qvel, d.mocap_pos.ravel(), d.mocap_quat.ravel()]).astype(np.float64)

    @property
    def full_state(self) -> np.ndarray:
        """float32 [39]: Meta-World's observation (hand, gripper, objects, previous frame, goal)."""
        return self._full_state.copy()

    @property
    def tcp_center(self) -> np.ndarray:
        """Position of the gripper's tool centre point, float [3]."""
        return np.asarray(self._env.tcp_center, dtype=np.float64)

    def _observe(self, full: np.ndarray) -> dict[str, Any]:
        self._full_state = np.asarray(full, dtype=np.float32)
        state = self._full_state[:4] if self.state_mode == "hand" else self._full_state
        if self.render_images:
            self._image = self._render_frame()
        return {"image": self._image.copy(), "state": state.copy(), "instruction": self.instruction}

    def _render_frame(self) -> np.ndarray:
        mj = self._mujoco
        if self._renderer is None:
            key = (self.task_name, self.image_size)
            if key not in _SHARED_RENDERERS:
                renderer = mj.Renderer(self._env.model, self.image_size, self.image_size)
                renderer.scene.flags[mj.mjtRndFlag.mjRND_SHADOW] = 0
                renderer.scene.flags[mj.mjtRndFlag.mjRND_REFLECTION] = 0
                renderer.scene.flags[mj.mjtRndFlag.mjRND_SKYBOX] = 0
                _SHARED_RENDERERS[key] = renderer
            self._renderer = _SHARED_RENDERERS[key]
            _OPEN_ENVS.add(self)
            if not _EXIT_HOOK:
                _EXIT_HOOK.append(atexit.register(_close_open_renderers))
            if self._camera_id >= 0:
                # The camera's image-up axis is column 1 of its world rotation; pointing down means rolled by 180°.
                up_z = self._env.data.cam_xmat[self._camera_id].reshape(3, 3)[2, 1]
                self._rotate_180 = bool(up_z < 0)
            else:
                view = FREE_CAMERAS[self.camera]
                self._camera = mj.MjvCamera()
                self._camera.type = mj.mjtCamera.mjCAMERA_FREE
                self._camera.lookat[:] = view["lookat"]
                self._camera.distance = view["distance"]
                self._camera.azimuth = view["azimuth"]
                self._camera.elevation = view["elevation"]
        self._renderer.update_scene(self._env.data, camera=self._camera)
        frame = self._renderer.render()
        if self._rotate_180:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def describe(self) -> dict[str, Any]:
        """Dataset metadata: image size, camera, action space, control frequency, simulator and state layout."""
        return {
            "simulator": "metaworld",
            "simulator_version": simulator_version(),
            "image_size": [self.image_size, self.image_size],
            "camera": self.camera,
            "action_space": {"low": [-1.0] * 4, "high": [1.0] * 4, "shape": [4]},
            "action_layout": ["dx", "dy", "dz", "gripper_effort"],
            "control_frequency": self.control_frequency,
            "state_mode": self.state_mode,
            "state_layout": STATE_LAYOUT[self.state_mode],
            "full_state_dim": FULL_STATE_DIM,
            "max_episode_steps": self.max_episode_steps,
        }
