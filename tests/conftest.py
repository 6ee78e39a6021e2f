"""Shared test setup: offscreen MuJoCo rendering, run-local caches, and small shared fixtures."""

from __future__ import annotations

import os
import tempfile

# Before any MuJoCo import: render offscreen with EGL; keep caches out of the home directory.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_CACHE = tempfile.mkdtemp(prefix="wlarl-test-cache-")
for var in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "MESA_SHADER_CACHE_DIR", "HF_DATASETS_CACHE"):
    os.environ.setdefault(var, os.path.join(_CACHE, var.lower()))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from support import HAS_METAWORLD, requires_metaworld  # noqa: E402,F401


def synthetic_episode(t: int = 6, size: int = 8, seed: int = 0, task: str = "reach-v3", success_at: int | None = 3):
    """An episode dict for `wlarl.data.write_episodes` with T=t actions; observation k has pixel value k."""
    success = np.zeros(t, bool)
    if success_at is not None:
        success[success_at:] = True
    return {
        "image": np.stack([np.full((size, size, 3), k, np.uint8) for k in range(t + 1)]),
        "state": np.arange(t + 1, dtype=np.float32)[:, None].repeat(4, 1),
        "full_state": np.zeros((t + 1, 39), np.float32),
        "action": (np.arange(t, dtype=np.float32)[:, None] + 1).repeat(4, 1),
        "reward": np.ones(t, np.float32),
        "success": success,
        "subtask": [f"phase {k // 3}" for k in range(t + 1)],
        "instruction": f"do {task}",
        "task_name": task,
        "seed": seed,
        "noise_mode": "clean",
    }


@pytest.fixture
def episode_factory():
    """`synthetic_episode` as a fixture."""
    return synthetic_episode
