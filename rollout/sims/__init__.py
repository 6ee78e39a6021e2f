"""Real simulators behind one contract: observation dict `image` (uint8 [H, W, 3], upright), `state` (float32 [S]),
`instruction` (str); `info["success"]`; envs expose `task_name` and `control_frequency`.

Simulator back-ends are imported only when used, so `import rollout.sims` needs neither MuJoCo nor Meta-World::

    from rollout.sims import make_env, make_vector_env, task_names
    env = make_env("reach-v3", image_size=64)                        # Meta-World (default simulator)
    envs = make_vector_env("MT10", num_envs=10, vectorization="async")  # one env per task
    env = make_env("gym:gym_pusht/PushT-v0", obs_map={...}, instruction="Push the T onto the target.")
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from rollout.sims.metaworld import MT10, MT50, TASK_SETS, resolve_tasks

task_names: dict[str, list[str]] = {"MT10": list(MT10), "MT50": list(MT50)}

__all__ = ["MT10", "MT50", "TASK_SETS", "make_env", "make_vector_env", "resolve_tasks", "task_names"]

_GYM_PREFIX = "gym:"
_METAWORLD_PREFIX = "metaworld:"


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Build one contract env from a spec.

    Args:
        name: a Meta-World task (`reach-v3`, optionally prefixed `metaworld:`), or `gym:<gymnasium id>` for any
            registered gymnasium env wrapped by `GymAdapter` (pass `obs_map`, `instruction`, `env_kwargs`).
        **kwargs: forwarded to `MetaWorldEnv` or `GymAdapter`.
    """
    if not isinstance(name, str):
        raise TypeError(f"make_env: expected a task name or 'gym:<id>' string, got {type(name).__name__}")
    if name.startswith(_GYM_PREFIX):
        from rollout.sims.gym_adapter import GymAdapter

        env_kwargs = kwargs.pop("env_kwargs", None) or {}
        return GymAdapter(gym.make(name[len(_GYM_PREFIX) :], **env_kwargs), **kwargs)
    if name.startswith(_METAWORLD_PREFIX):
        name = name[len(_METAWORLD_PREFIX) :]
    from rollout.sims.metaworld import MetaWorldEnv

    return MetaWorldEnv(name, **kwargs)


def make_vector_env(
    tasks: str | Sequence[str],
    num_envs: int | None = None,
    vectorization: str = "sync",
    context: str | None = "spawn",
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """A gymnasium vector env over one or several tasks (env i runs task i mod len(tasks)).

    Args:
        tasks: a task set (`MT10`, `MT50`), a task name, a comma-separated string or a list of task names.
        num_envs: number of sub-envs (default: one per task).
        vectorization: `sync` (one process) or `async` (one worker process per sub-env).
        context: multiprocessing start method for `async` (`spawn` is safe with EGL contexts).
        **kwargs: forwarded to every `make_env` call (image_size, state_mode, max_episode_steps, ...).

    Returns:
        A `SyncVectorEnv` or `AsyncVectorEnv` whose observations are dicts of batched arrays; `instruction` is a
        tuple of N strings. `call("task_name")` lists the sub-envs' tasks.
    """
    names = resolve_tasks(tasks)
    n = len(names) if num_envs is None else int(num_envs)
    if n < 1:
        raise ValueError(f"num_envs={num_envs}: expected at least 1")
    fns: list[Callable[[], gym.Env]] = [functools.partial(make_env, names[i % len(names)], **kwargs) for i in range(n)]
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv(fns)
    if vectorization == "async":
        # Text observations (instructions) cannot live in shared memory.
        return gym.vector.AsyncVectorEnv(fns, shared_memory=False, context=context)
    raise ValueError(f"vectorization={vectorization!r}: expected 'sync' or 'async'")
