"""Advantage agreement: does a GRPO step in imagination point the way reality does?

GRPO learns only from the sign and order of the advantages inside each group. This diagnostic takes B branch points
inside real episodes (`rollout.ranking.branch_points`: rebuildable from task, seed and recorded actions), lets the
current policy imagine G chunk sequences from each with the training engine, scores them with the training rewards and
turns them into advantages exactly as the trainer does (`wlarl.algorithms.grpo.compute_advantages`). The same executed
actions are then replayed open-loop in the real simulator from the rebuilt states (`rollout.ranking.replay_group`),
and every group is compared with what reality made of them (`rollout.ranking.within_group_agreement`):

- ``verify/advantage_agreement``: over the rows of groups whose real success varies, the share whose imagined
  advantage has the sign of the real success's advantage (chance 0.5; a tie counts as a disagreement);
- ``verify/advantage_spearman``: the mean within-group Spearman of imagined advantages and real success;
- ``…_return``: the same against the simulator's shaped return (defined for every group, also where success does
  not vary);
- ``verify/advantage_agreement_ceiling``: the same rewards scored on the real replay instead of the imagined rows:
  what the rewards could tell GRPO with a perfect World Expert. Agreement far below the ceiling is the World Expert's
  fault; a low ceiling is the reward's.

A step taken while agreement is at chance is noise, whatever imagined success says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rollout.ranking import BranchPoint, real_replay_trajectories, replay_group, within_group_agreement
from wlarl.algorithms import grpo
from wlarl.types import Observation, RewardOutput, Trajectories
from wlarl.utils.video import branch_strip, write_png_atomic

RewardScorer = Callable[..., RewardOutput]


class AdvantageAgreement:
    """``(policy, step) -> metrics`` for a `VerifyCallback`-style periodic callback.

    Args:
        engine: the imagination engine GRPO trains in (``rollout(policy, starts, group_size, temperature, horizon,
            generator=...) -> Trajectories``).
        reward_scorer: the training reward scorer, ``(trajectories, trainer_state=None) -> RewardOutput``.
        points: the B branch points (each with an ``observation``); the same every call, so that calls compare.
        group_size: G continuations per branch point (the trainer's ``num_generations``).
        horizon: h chunks per continuation (the trainer's imagined horizon).
        chunk_size: H env steps per chunk.
        temperature: the policy's sampling temperature in training.
        aggregation, scale_rewards: the trainer's ``multi_objective_aggregation`` and ``scale_rewards``.
        env_kwargs: keyword arguments of the real simulator (image size, camera).
        env_factory: ``(task_name, max_episode_steps, **env_kwargs) -> env``; default: Meta-World without per-step
            rendering (frames are rendered once per chunk).
        seed: seeds the sampling of every call (``seed + step``), so that a call does not draw from the global RNG.
        strip_dir: where every call writes ``strip_step_<step>.png``: one row of one group, the real frames after
            each chunk (top) above the World Expert's predicted ones (bottom), the branch point's frame first (the
            group shown is the first whose real success varies, else the first). None: no strips.
    """

    def __init__(
        self,
        engine: Any,
        reward_scorer: RewardScorer,
        points: Sequence[BranchPoint],
        group_size: int,
        horizon: int,
        chunk_size: int,
        temperature: float = 1.0,
        aggregation: str = "sum_then_normalize",
        scale_rewards: str = "group",
        env_kwargs: dict[str, Any] | None = None,
        env_factory: Callable[..., Any] | None = None,
        seed: int = 0,
        strip_dir: str | Path | None = None,
    ):
        self.points = list(points)
        if not self.points:
            raise ValueError("AdvantageAgreement: expected at least one branch point, got none")
        missing = [i for i, bp in enumerate(self.points) if bp.observation is None]
        if missing:
            raise ValueError(f"AdvantageAgreement: branch points {missing[:5]} carry no observation to imagine from")
        if group_size < 2:
            raise ValueError(f"AdvantageAgreement: a group needs G ≥ 2 rows to have advantages, got {group_size}")
        if horizon < 1 or chunk_size < 1:
            raise ValueError(f"AdvantageAgreement: horizon ({horizon}) and chunk_size ({chunk_size}) must be ≥ 1")
        self.engine, self.reward_scorer = engine, reward_scorer
        self.group_size, self.horizon, self.chunk_size = int(group_size), int(horizon), int(chunk_size)
        self.temperature = float(temperature)
        self.aggregation, self.scale_rewards = aggregation, scale_rewards
        self.env_kwargs = dict(env_kwargs or {})
        self.env_factory = env_factory or _metaworld_env
        self.seed = int(seed)
        self.strip_dir = Path(strip_dir) if strip_dir is not None else None
        self._envs: dict[tuple[str, int], Any] = {}
        self.history: list[dict[str, Any]] = []  # per call: step, imagined/real advantages and outcomes [B, G]

    def _env(self, bp: BranchPoint) -> Any:
        steps = bp.step + self.horizon * self.chunk_size
        key = (bp.task_name, steps)
        if key not in self._envs:
            self._envs[key] = self.env_factory(bp.task_name, max_episode_steps=steps, **self.env_kwargs)
        return self._envs[key]

    def _advantages(self, traj: Trajectories) -> torch.Tensor:
        rewards = self.reward_scorer(traj, trainer_state=None)
        adv, _ = grpo.compute_advantages(
            rewards.per_function, rewards.weights, self.group_size, self.aggregation, self.scale_rewards
        )
        return adv.reshape(-1, self.group_size)  # [B, G]

    def __call__(self, policy: torch.nn.Module, step: int) -> dict[str, Any]:
        B, G, h, H = len(self.points), self.group_size, self.horizon, self.chunk_size
        starts = Observation.from_dicts([bp.observation for bp in self.points])  # [B]
        gen = torch.Generator().manual_seed(self.seed + int(step))
        with torch.no_grad():
            imagined = self.engine.rollout(
                policy, starts, group_size=G, temperature=self.temperature, horizon=h, generator=gen
            )
        actions = imagined.actions.numpy().reshape(B, G, h, H, -1)  # executed (clipped) actions
        replays = [replay_group(self._env(bp), bp, actions[b]) for b, bp in enumerate(self.points)]
        real = real_replay_trajectories(imagined, replays)
        adv_imagined = self._advantages(imagined).numpy()  # [B, G]
        adv_ceiling = self._advantages(real).numpy()  # [B, G]: the same rewards on what reality did
        success = np.stack([r["success"] for r in replays]).astype(np.float64)  # [B, G]
        shaped = np.stack([r["shaped_return"] for r in replays]).astype(np.float64)  # [B, G]
        vs_success = within_group_agreement(adv_imagined, success)
        vs_return = within_group_agreement(adv_imagined, shaped)
        ceiling = within_group_agreement(adv_ceiling, success)
        ceiling_return = within_group_agreement(adv_ceiling, shaped)
        imagined_success = imagined.success.numpy().reshape(B, G).astype(np.float64)
        self.history.append(
            {"step": int(step), "imagined": adv_imagined, "ceiling": adv_ceiling, "success": success,
             "shaped_return": shaped, "imagined_success": imagined_success}
        )  # fmt: skip
        if self.strip_dir is not None:
            self._write_strip(step, imagined, replays, success)
        env_steps = sum(G * (bp.step + h * H) for bp in self.points)  # every row rebuilds its branch point
        metrics = {
            "verify/advantage_agreement": vs_success["sign_agreement"],
            "verify/advantage_spearman": vs_success["spearman"],
            "verify/advantage_agreement_return": vs_return["sign_agreement"],
            "verify/advantage_spearman_return": vs_return["spearman"],
            "verify/advantage_agreement_ceiling": ceiling["sign_agreement"],
            "verify/advantage_spearman_ceiling": ceiling["spearman"],
            "verify/advantage_agreement_ceiling_return": ceiling_return["sign_agreement"],
            "verify/agreement_groups": vs_success["groups"],  # groups whose real success varies
            "verify/agreement_points": float(B),
            "verify/agreement_imagined_success": float(imagined_success.mean()),
            "verify/agreement_real_success": float(success.mean()),
            "verify/agreement_gap": float(imagined_success.mean() - success.mean()),
            "real_episodes": B * G,
            "real_env_steps": env_steps,
        }
        # no group whose real outcome varies: there is no agreement to log (agreement_groups says so)
        return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}

    def _write_strip(self, step: int, imagined: Trajectories, replays: list[dict], success: np.ndarray) -> None:
        varies = [b for b in range(success.shape[0]) if success[b].min() != success[b].max()]
        b = varies[0] if varies else 0
        g = int(np.argmax(success[b])) if varies else 0  # a row that succeeded in reality, where one did
        G = self.group_size
        predicted = imagined.subgoal_images[b * G + g]  # [h, S, S, 3] (decoded here when lazy)
        predicted = np.asarray(predicted.materialize() if hasattr(predicted, "materialize") else predicted)
        start = np.asarray(self.points[b].observation["image"], dtype=np.uint8)
        strip = branch_strip(start, np.asarray(replays[b]["frames"][g]), predicted)
        self.strip_dir.mkdir(parents=True, exist_ok=True)
        write_png_atomic(self.strip_dir / f"strip_step_{int(step):06d}.png", strip)

    def close(self) -> None:
        for env in self._envs.values():
            close = getattr(env, "close", None)
            if callable(close):
                close()
        self._envs.clear()


def _metaworld_env(task_name: str, max_episode_steps: int, **env_kwargs: Any) -> Any:
    from rollout.sims.metaworld import MetaWorldEnv

    return MetaWorldEnv(task_name, render_images=False, max_episode_steps=max_episode_steps, **env_kwargs)


def agreement_points(
    ep_ds: Any,
    tasks: Sequence[str],
    per_task: int,
    positions: Sequence[str],
    late_steps: int,
) -> list[BranchPoint]:
    """The diagnostic's branch points: `per_task` successful episodes of each task, at each of `positions`.

    Raises a ValueError naming the tasks that have no successful episode in the dataset.
    """
    from rollout.ranking import branch_points

    if per_task < 1:
        raise ValueError(f"agreement_points: per_task must be ≥ 1, got {per_task}")
    points = branch_points(ep_ds, positions=positions, late_steps=late_steps, per_task=per_task, tasks=list(tasks))
    missing = sorted(set(tasks) - {bp.task_name for bp in points})
    if missing:
        raise ValueError(
            f"agreement_points: no successful episode of {missing} in the dataset to branch from; choose other "
            f"tasks or collect demonstrations of them"
        )
    return points
