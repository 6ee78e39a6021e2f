"""Wrap any gymnasium env plus an observation mapping into the wlarl real-simulator contract.

Example (gym-pusht)::

    import gym_pusht  # registers gym_pusht/PushT-v0
    env = GymAdapter(
        gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos"),
        obs_map={"image": "pixels", "state": "agent_pos"},
        instruction="Push the T-shaped block onto the target.",
        normalize_actions=True,
    )
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rollout.sims.metaworld import INSTRUCTION_CHARSET

ObsGetter = str | Callable[[Any, gym.Env], Any]


def _default_success(info: Mapping[str, Any], obs: Any) -> bool:
    return bool(info.get("success", info.get("is_success", False)))


class GymAdapter(gym.Wrapper):
    """Contract observations (`image`, `state`, `instruction`) and `info["success"]` for any gymnasium env.

    Args:
        env: the gymnasium env.
        obs_map: where `image` and `state` come from: a key of the env's dict observation (dots for nested
            dicts), `"render"` (image only: `env.render()`), or a callable `(raw_obs, env) -> value`. Default:
            image from `render`, state from the raw observation itself.
        instruction: one sentence, several phrasings (one chosen per episode by the reset seed), or a callable
            `(seed) -> str`.
        success_fn: `(info, raw_obs) -> bool`; default reads `info["success"]` or `info["is_success"]`.
        task_name: name reported as `task_name` (default: the env's spec id).
        normalize_actions: expose Box(-1, 1) actions, rescaled to the env's Box bounds.
        control_frequency: steps per second (default: the env's `metadata["render_fps"]`).
    """

    def __init__(
        self,
        env: gym.Env,
        obs_map: Mapping[str, ObsGetter] | None = None,
        instruction: str | Sequence[str] | Callable[[int | None], str] = "",
        success_fn: Callable[[Mapping[str, Any], Any], bool] | None = None,
        task_name: str | None = None,
        normalize_actions: bool = False,
        control_frequency: float | None = None,
    ) -> None:
        super().__init__(env)
        obs_map = dict(obs_map or {})
        unknown = sorted(set(obs_map) - {"image", "state"})
        if unknown:
            raise ValueError(f"GymAdapter obs_map: unknown key(s) {unknown}; expected 'image' and/or 'state'")
        self._image_getter: ObsGetter = obs_map.get("image", "render")
        self._state_getter: ObsGetter | None = obs_map.get("state")
        self._instruction = instruction
        self._success_fn = success_fn or _default_success
        self.task_name = task_name or (env.spec.id if env.spec is not None else type(env.unwrapped).__name__)
        self.control_frequency = float(control_frequency or env.metadata.get("render_fps") or 0.0)
        self.instruction = ""
        self.episode_seed: int | None = None

        self._normalize = normalize_actions
        if normalize_actions:
            if not isinstance(env.action_space, gym.spaces.Box):
                raise TypeError(f"normalize_actions needs a Box action space, got {env.action_space}")
            self._act_low = env.action_space.low.astype(np.float64)
            self._act_high = env.action_space.high.astype(np.float64)
            shape = env.action_space.shape
            self.action_space = gym.spaces.Box(-1.0, 1.0, shape, dtype=np.float32)

        # Probe one observation to size the spaces (the caller's reset(seed) restarts the env afterwards).
        raw, _ = env.reset()
        image, state = self._image(raw), self._state(raw)
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, image.shape, dtype=np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, state.shape, dtype=np.float32),
                "instruction": gym.spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
            }
        )

    # ---------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        self.episode_seed = int(seed)
        raw, info = self.env.reset(seed=self.episode_seed, options=options)
        self.instruction = self._pick_instruction(self.episode_seed)
        info = dict(info)
        info.update(success=bool(self._success_fn(info, raw)), seed=self.episode_seed)
        return self._observe(raw), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action)
        if self._normalize:
            a = np.clip(action.astype(np.float64), -1.0, 1.0)
            action = (self._act_low + (a + 1.0) * 0.5 * (self._act_high - self._act_low)).astype(
                self.env.action_space.dtype
            )
        raw, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info.update(success=bool(self._success_fn(info, raw)), seed=self.episode_seed)
        return self._observe(raw), float(reward), bool(terminated), bool(truncated), info

    # ---------------------------------------------------------------- helpers

    def _observe(self, raw: Any) -> dict[str, Any]:
        return {"image": self._image(raw), "state": self._state(raw), "instruction": self.instruction}

    def _get(self, getter: ObsGetter, raw: Any, what: str) -> Any:
        if callable(getter):
            return getter(raw, self.env)
        if getter == "render":
            return self.env.render()
        value = raw
        for part in getter.split("."):
            if not isinstance(value, Mapping) or part not in value:
                keys = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                raise KeyError(f"GymAdapter({self.task_name}): {what} key {getter!r} not in observation {keys}")
            value = value[part]
        return value

    def _image(self, raw: Any) -> np.ndarray:
        image = np.asarray(self._get(self._image_getter, raw, "image"))
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"GymAdapter({self.task_name}): image must be uint8 [H, W, 3], got {image.dtype} {image.shape}; "
                "map obs_map['image'] to a callable that converts it"
            )
        return np.ascontiguousarray(image)

    def _state(self, raw: Any) -> np.ndarray:
        value = raw if self._state_getter is None else self._get(self._state_getter, raw, "state")
        if isinstance(value, Mapping):
            raise ValueError(
                f"GymAdapter({self.task_name}): the observation is a dict {sorted(value)}; set obs_map['state']"
            )
        return np.asarray(value, dtype=np.float32).reshape(-1)

    def _pick_instruction(self, seed: int) -> str:
        if callable(self._instruction):
            return str(self._instruction(seed))
        if isinstance(self._instruction, str):
            return self._instruction
        options = list(self._instruction)
        if not options:
            return ""
        return options[int(np.random.default_rng([seed, 7919]).integers(len(options)))]
