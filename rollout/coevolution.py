"""Co-evolution rounds: the simulator, the reward and the start states follow the policy.

A round (`CoevolutionRound`, run by `wlarl.trainer.callbacks.CoevolutionCallback` at train begin and every
``max_steps / rounds`` steps) does, with the current policy:

1. **collect** ``episodes_per_task`` sampled real episodes per task through the simulator pool (not stopped at the
   first success, so the policy's own solved states are in them as well as its failures; seeds ``seed + 1000·r + e``,
   never those of evaluation), written to ``output_dir/round_<r>/episodes``;
2. **refresh the World Expert** of the frozen simulator snapshot on the demonstrations and every policy episode so
   far, the newest round counted ``newest_weight`` times (`rollout.refresh.refresh_world_model`);
3. **refresh the reward models** on the same data through ``reward_refresh(dataset_paths, round_dir)`` (the recipe
   retrains the state reward model into ``round_dir/state_reward`` and swaps it in where it is used);
4. **branch points**: keyframes of the new episodes join the start states GRPO imagines from, and the round's
   per-task outcomes (``task_outcomes``) tell the trainer where real groups would carry signal
   (``start_sampling='round_signal'``).

Everything a round produces is on disk, so a resumed run rebuilds the rounds it had done (`restore`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ROUND_DIR = "round_{:03d}"
WORLD_FILE = "world.safetensors"


class CoevolutionRound:
    """``round_fn(policy, round_index) -> dict``: one co-evolution round (see the module docstring).

    Args:
        tasks: the real-simulator tasks to collect on.
        episodes_per_task: P_r / len(tasks) sampled episodes per task and round.
        output_dir: where rounds write their episodes, World-Expert weights and state reward models.
        demo_dataset_path: the demonstrations (a `write_episodes` folder): refreshes train on them too.
        world: the frozen simulator snapshot behind the imagination engine (refreshed in place).
        refresh_steps: World-Expert gradient steps per round (0: no refresh).
        refresh_lr: their learning rate.
        open_loop_chunks: the refresh trains the World Expert open-loop over this many chunks (its predictions fed
            back; `rollout.refresh.refresh_world_model`).
        open_loop_reencode: feed back encode(decode(prediction)), as an engine with `reencode` does.
        keyframe_stride: steps between the branch points taken from the new episodes.
        temperature: sampling temperature of the collection (the training temperature).
        max_episode_steps: env steps per collected episode.
        pool: the run's `rollout.real.EnvWorkerPool` (None: `num_workers` processes per call).
        num_workers, env_kwargs, timeout_s: as `rollout.real.rollout_policy`.
        reward_refresh: ``fn(dataset_paths, round_dir) -> metrics``: retrain the reward models on the demonstrations
            and every policy episode so far, write them under `round_dir` and swap them in (None: no refresh).
        reward_restore: ``fn(round_dir)``: swap in the models a round wrote (a resumed run).
        newest_weight: how many times the newest round's episodes count in the World-Expert refresh.
        seed: base reset seed of the collections.
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str],
        episodes_per_task: int,
        output_dir: str | Path,
        demo_dataset_path: str | Path,
        world: torch.nn.Module,
        refresh_steps: int = 100,
        refresh_lr: float = 1e-4,
        open_loop_chunks: int = 3,
        open_loop_reencode: bool = True,
        keyframe_stride: int = 8,
        temperature: float = 1.0,
        max_episode_steps: int = 150,
        pool: Any | None = None,
        num_workers: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        timeout_s: float = 1800.0,
        reward_refresh: Callable[[list[Path], Path], dict[str, float]] | None = None,
        reward_restore: Callable[[Path], None] | None = None,
        newest_weight: int = 2,
        seed: int = 300_000,
    ):
        if episodes_per_task < 1:
            raise ValueError(f"CoevolutionRound: episodes_per_task must be ≥ 1, got {episodes_per_task}")
        if refresh_steps < 0 or newest_weight < 1:
            raise ValueError(
                f"CoevolutionRound: refresh_steps ({refresh_steps}) must be ≥ 0 and newest_weight ({newest_weight}) ≥ 1"
            )
        self.tasks = list(tasks)
        self.episodes_per_task = int(episodes_per_task)
        self.output_dir = Path(output_dir)
        self.demo_dataset_path = Path(demo_dataset_path)
        self.world = world
        self.refresh_steps, self.refresh_lr = int(refresh_steps), float(refresh_lr)
        self.open_loop_chunks, self.open_loop_reencode = int(open_loop_chunks), bool(open_loop_reencode)
        self.keyframe_stride = int(keyframe_stride)
        self.temperature = float(temperature)
        self.max_episode_steps = int(max_episode_steps)
        self.pool, self.num_workers, self.env_kwargs = pool, int(num_workers), dict(env_kwargs or {})
        self.timeout_s = float(timeout_s)
        self.reward_refresh, self.reward_restore = reward_refresh, reward_restore
        self.newest_weight = int(newest_weight)
        self.seed = int(seed)
        self.episode_paths: list[Path] = []  # one dataset per round done
        self._demos: list[dict[str, Any]] | None = None

    def round_dir(self, round_index: int) -> Path:
        return self.output_dir / ROUND_DIR.format(round_index)

    def _demo_episodes(self) -> list[dict[str, Any]]:
        from rollout.verify import as_episode_list
        from wlarl.data import load_episodes

        if self._demos is None:
            self._demos = as_episode_list(load_episodes(self.demo_dataset_path))
        return self._demos

    def _collect(self, policy: Any, round_index: int) -> tuple[list[dict[str, Any]], Any]:
        from rollout.real import rollout_policy

        res = rollout_policy(
            policy, self.tasks, self.episodes_per_task, seeds=self.seed + 1000 * round_index,
            num_workers=self.num_workers, pool=self.pool, max_episode_steps=self.max_episode_steps,
            stop_on_success=False, sample=True, temperature=self.temperature, env_kwargs=self.env_kwargs,
            timeout_s=self.timeout_s,
        )  # fmt: skip
        if not res.episodes:
            raise RuntimeError(f"co-evolution round {round_index}: no episode came back from the simulator")
        return res.episodes, res

    def _refresh_world(self, newest: list[dict[str, Any]]) -> dict[str, float]:
        from rollout.refresh import refresh_metrics, refresh_world_model
        from rollout.verify import as_episode_list
        from wlarl.data import load_episodes

        policy_eps = [ep for p in self.episode_paths for ep in as_episode_list(load_episodes(p))]
        episodes = self._demo_episodes() + policy_eps + newest * (self.newest_weight - 1)
        res = refresh_world_model(
            self.world, episodes, steps=self.refresh_steps, lr=self.refresh_lr, eval_episodes=newest,
            seed=self.seed + len(self.episode_paths), open_loop_chunks=self.open_loop_chunks,
            open_loop_reencode=self.open_loop_reencode,
        )  # fmt: skip
        return refresh_metrics(res, prefix="round")

    def _starts(self, path: Path) -> list[dict[str, Any]]:
        from wlarl.data import keyframe_states, load_episodes

        return keyframe_states(load_episodes(path), self.keyframe_stride)

    @staticmethod
    def _outcomes(path: Path) -> dict[str, tuple[int, int]]:
        from wlarl.data import load_episodes, task_outcomes

        return task_outcomes(load_episodes(path))

    def __call__(self, policy: Any, round_index: int) -> dict[str, Any]:
        from wlarl.data import write_episodes

        rdir = self.round_dir(round_index)
        episodes, res = self._collect(policy, round_index)
        path = write_episodes(
            episodes, rdir / "episodes", {"source": "coevolution", "round": round_index, "seed": self.seed}
        )
        metrics: dict[str, Any] = {
            "round/index": float(round_index),
            "round/collected_episodes": float(len(episodes)),
            "round/collected_success": float(np.mean([bool(np.any(ep["success"])) for ep in episodes])),
        }
        if self.refresh_steps:
            metrics.update(self._refresh_world(episodes))
        self.episode_paths.append(Path(path))
        if self.reward_refresh is not None:
            refreshed = self.reward_refresh([self.demo_dataset_path, *self.episode_paths], rdir)
            metrics.update({f"round/{k}": float(v) for k, v in refreshed.items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.world.state_dict().items()}
        _save_atomic(tensors, rdir / WORLD_FILE)
        starts = self._starts(Path(path))
        metrics["round/new_starts"] = float(len(starts))
        outcomes = self._outcomes(Path(path))
        for task, (won, n) in outcomes.items():
            metrics[f"round/success/{task}"] = won / n
        return {
            **metrics,
            "starts": starts,
            "task_outcomes": outcomes,
            "real_episodes": int(getattr(res, "episodes_started", len(episodes))),
            "real_env_steps": int(getattr(res, "env_steps", sum(len(ep["action"]) for ep in episodes))),
        }

    def restore(self, rounds_done: int) -> dict[str, Any]:
        """Rebuild the first `rounds_done` rounds from disk (a resumed run): the episodes, the last round's World
        Expert and state reward model. Returns ``starts`` (the start states those rounds added) and
        ``task_outcomes`` (the last round's, as a round returns them; None when no round was done).

        Raises:
            FileNotFoundError: a round's outputs are missing (the run folder is not the one that was resumed).
        """
        from safetensors.torch import load_file

        starts: list[dict[str, Any]] = []
        self.episode_paths = []
        for r in range(rounds_done):
            path = self.round_dir(r) / "episodes"
            if not path.is_dir():
                raise FileNotFoundError(
                    f"co-evolution: resuming after round {r} but {path} is missing; resume in the run's output_dir"
                )
            self.episode_paths.append(path)
            starts += self._starts(path)
        if rounds_done:
            last = self.round_dir(rounds_done - 1)
            self.world.load_state_dict(load_file(str(last / WORLD_FILE)))
            if self.reward_restore is not None:
                self.reward_restore(last)
        outcomes = self._outcomes(self.episode_paths[-1]) if rounds_done else None
        return {"starts": starts, "task_outcomes": outcomes}


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)  # readers see the old file or the new one, never a partial one
    finally:
        tmp.unlink(missing_ok=True)
