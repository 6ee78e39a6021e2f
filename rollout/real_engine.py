"""GRPO rollouts in the real simulator: `RealEngine`, the same protocol as `rollout.imagined.ImaginationEngine`.

``engine.rollout(policy, starts, group_size, temperature, horizon, seeds=...) -> Trajectories`` runs the G samples of
each of B starts in the real simulator and returns the fields imagination returns, so the GRPO trainer, the reward
functions, the filters and the logging are the same:

* **starts** are seeded resets: the G rows of a group reset their env with the start's seed, so they begin in the same
  physical state (the MuJoCo states are compared, and a start whose recorded state differs from its reset is an
  error: perturbed or mid-episode starts cannot be rebuilt by a reset);
* **subgoal_images** are the real frames after each chunk, **states** / **full_states** the real states after each
  chunk, **success** comes from ``info["success"]`` checked at every step (as evaluation checks it), and `alive` ends
  at the chunk of the first success; `success_logits` are ±`SUCCESS_LOGIT` by the real outcome of each chunk;
* the policy's **log-probs** are those of the chunks it sampled, on the observations (latents included) it read;
* rows that ended early are padded with their last chunk (alive False) so every tensor is dense [N, T];
* `env_steps` [N] counts the real env steps of every row: the real-interaction budget of a GRPO step.

The workers are those of an `EnvWorkerPool` (started once per run) or fresh ones per call; a worker that dies or hangs
is replaced and its episode re-run from its seed (see `rollout.real.rollout_policy`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rollout.real import EnvFn, EnvWorkerPool, rollout_policy
from wlarl.types import ActionSample, Observation, Trajectories

__all__ = ["SUCCESS_LOGIT", "RealEngine"]

SUCCESS_LOGIT = 20.0  # |logit| standing for a real outcome: sigmoid(±20) is 1 or 0 to float precision


class RealEngine:
    """On-policy GRPO rollouts in the real simulator.

    Args:
        world: the frozen snapshot of the starting policy (`rollout.imagined.freeze_snapshot`). It simulates nothing
            here; the trainer uses it as the KL / anchor reference, as it does the imagination engine's.
        chunk_size: H, env steps per action chunk (the policy's `config.chunk_size`; read from `world` when None).
        max_episode_steps: real env steps per training episode; the default horizon is the chunks that fit in it.
        horizon: T chunks per episode (default ``max_episode_steps // chunk_size``); T·H must not exceed
            `max_episode_steps`.
        pool: persistent simulator workers (shared with evaluation and verification); None starts `num_workers` fresh
            workers per call (0: in this process).
        num_workers: workers per call without a pool.
        env_fn, env_kwargs: how a worker builds the env of a task (see `rollout.real.rollout_policy`).
        timeout_s: wall-clock budget of one rollout call; lost episodes raise.
        worker_timeout_s: a worker silent this long on one request is replaced and its episode re-run from its seed.
        max_retries: re-runs of an episode whose worker failed.
        check_starts: compare each start's recorded state with its reset, and the G reset states of a group.
        slots_per_worker: episodes each fresh worker runs at once (without a pool; a pool has its own): the policy
            acts on all running episodes in one batched call.
    """

    engine = "real"

    def __init__(
        self,
        world: torch.nn.Module,
        chunk_size: int | None = None,
        max_episode_steps: int = 150,
        horizon: int | None = None,
        pool: EnvWorkerPool | None = None,
        num_workers: int = 2,
        env_fn: EnvFn | str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        timeout_s: float = 1800.0,
        worker_timeout_s: float = 300.0,
        max_retries: int = 2,
        check_starts: bool = True,
        slots_per_worker: int = 16,
    ):
        if chunk_size is None:
            chunk_size = int(getattr(getattr(world, "config", None), "chunk_size", 0) or 0)
        if chunk_size < 1:
            raise ValueError(f"RealEngine: chunk_size must be ≥ 1 env steps (the policy's chunk), got {chunk_size}")
        if max_episode_steps < chunk_size:
            raise ValueError(
                f"RealEngine: max_episode_steps={max_episode_steps} is shorter than one chunk of {chunk_size} steps"
            )
        horizon = int(horizon) if horizon is not None else max_episode_steps // chunk_size
        if horizon < 1 or horizon * chunk_size > max_episode_steps:
            raise ValueError(
                f"RealEngine: horizon={horizon} chunks × {chunk_size} steps must lie in [1, max_episode_steps="
                f"{max_episode_steps}]; at most {max_episode_steps // chunk_size} chunks fit"
            )
        if pool is not None and not pool.matches(env_fn, env_kwargs):
            raise ValueError(
                f"RealEngine: the worker pool was built for env_fn={pool.env_fn!r}, env_kwargs={pool.env_kwargs}; "
                f"got env_fn={env_fn!r}, env_kwargs={env_kwargs}"
            )
        self.world = world
        self.chunk_size = int(chunk_size)
        self.horizon = horizon
        self.max_episode_steps = int(max_episode_steps)
        self.pool = pool
        self.num_workers = int(num_workers)
        self.env_fn = env_fn
        self.env_kwargs = dict(env_kwargs or {})
        self.timeout_s = float(timeout_s)
        self.worker_timeout_s = float(worker_timeout_s)
        self.max_retries = int(max_retries)
        self.check_starts = bool(check_starts)
        self.slots_per_worker = int(slots_per_worker)
        self.last_result = None  # the RealRolloutResult of the last call (timings, worker failures)
        self.last_timing: dict[str, float] = {}  # seconds of the last call: "policy", "simulate", "assemble"
        # real interaction of the last call, re-runs after worker failures included: "episodes", "env_steps", and
        # the "worker_failures" that caused re-runs
        self.last_cost: dict[str, int] = {}

    @torch.no_grad()
    def rollout(
        self,
        policy: torch.nn.Module,
        starts: Observation,
        group_size: int = 1,
        temperature: float = 1.0,
        horizon: int | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
        seeds: torch.Tensor | list[int] | None = None,
    ) -> Trajectories:
        """Run G episodes of each of B starts in the real simulator.

        Args:
            policy: the acting WLA policy (`act(obs, sample, temperature)`).
            starts: Observation [B] of the start states (their task names and states; frames are re-rendered).
            group_size: G samples per start; rows are ordered b*G + g.
            temperature: sampling temperature of the policy.
            horizon: T chunks (default the engine's; T·H ≤ max_episode_steps).
            sample: sample (GRPO) or act greedily.
            generator: not supported (the simulator workers' episodes are seeded by their starts); must be None.
            seeds: long [B] reset seeds of the starts (`collate_starts` hands them to the trainer).

        Returns:
            Trajectories with N = B·G rows and T chunks, `engine` "real", `env_steps` [N] and `full_states`.
        """
        if generator is not None:
            raise ValueError("RealEngine.rollout: a torch generator cannot seed the real simulator; pass None")
        T = int(horizon or self.horizon)
        if T * self.chunk_size > self.max_episode_steps:
            raise ValueError(
                f"RealEngine.rollout: horizon={T} chunks × {self.chunk_size} steps exceeds max_episode_steps="
                f"{self.max_episode_steps}"
            )
        B, G = len(starts), int(group_size)
        if seeds is None:
            raise ValueError(
                "RealEngine.rollout: the real engine rebuilds each start by a seeded reset and needs its seed; pass "
                "seeds (start_states 'reset' gives seeded starts)"
            )
        seed_list = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
        if len(seed_list) != B:
            raise ValueError(f"RealEngine.rollout: expected {B} seeds (one per start), got {len(seed_list)}")
        bad = [b for b, s in enumerate(seed_list) if s < 0]
        if bad:
            raise ValueError(
                f"RealEngine.rollout: starts {bad} have no reset seed (seed -1): dataset frames that are not seeded "
                "resets cannot be rebuilt in the real simulator; use start_states 'reset'"
            )
        jobs = [(starts.task_names[b], seed_list[b]) for b in range(B) for _ in range(G)]
        result = rollout_policy(
            policy, [], 0, jobs=jobs, pool=self.pool, num_workers=self.num_workers, env_fn=self.env_fn,
            env_kwargs=self.env_kwargs, max_episode_steps=T * self.chunk_size, timeout_s=self.timeout_s,
            worker_timeout_s=self.worker_timeout_s, max_retries=self.max_retries, keep_episodes=False,
            frames="chunk", record_samples=True, sample=sample, temperature=temperature,
            slots_per_worker=self.slots_per_worker,
        )  # fmt: skip
        self.last_result = result
        self.last_cost = {
            "episodes": result.episodes_started,
            "env_steps": result.env_steps,
            "worker_failures": len(result.worker_failures),
        }
        t_assemble = time.monotonic()
        if result.lost or len(result.rollouts) != len(jobs):
            lost = ", ".join(f"{d['task']} seed {d['seed']} ({d['reason']})" for d in result.lost[:5])
            raise RuntimeError(
                f"RealEngine.rollout: {len(result.lost)} of {len(jobs)} real episodes were lost: {lost}; worker "
                f"failures: {result.worker_failures[-3:]}"
            )
        if self.check_starts:
            self._check_group_starts(starts, result.rollouts, G)
        traj = self._trajectories(result.rollouts, starts, G, T)
        self.last_timing = {
            "policy": result.policy_s,
            "simulate": max(result.wall_s - result.policy_s, 0.0),
            "assemble": time.monotonic() - t_assemble,
        }
        return traj

    # ------------------------------------------------------------------------------------------ helpers
    def _check_group_starts(self, starts: Observation, rollouts: list[dict[str, Any]], G: int) -> None:
        """The G rows of a group began in one physical state, and that state is the start's."""
        for b in range(len(starts)):
            rows = rollouts[b * G : (b + 1) * G]
            first_obs = rows[0]["chunks"][0]["observation"]
            state = starts.states[b].float().cpu()
            if not torch.allclose(first_obs.states[0].float().cpu(), state, atol=1e-5):
                raise ValueError(
                    f"RealEngine: start {b} ({starts.task_names[b]}) is not the state its seeded reset gives "
                    f"(recorded {state.tolist()}, reset {first_obs.states[0].tolist()}); only reset states can be "
                    "rebuilt in the real simulator (start_states 'reset')"
                )
            sims = [r["sim_state"] for r in rows]
            if all(s is not None for s in sims) and not all(np.array_equal(sims[0], s) for s in sims[1:]):
                raise RuntimeError(
                    f"RealEngine: the {G} resets of start {b} ({starts.task_names[b]}) gave different MuJoCo states: "
                    "the simulator is not deterministic under a seeded reset"
                )

    def _trajectories(self, rollouts: list[dict[str, Any]], starts: Observation, G: int, T: int) -> Trajectories:
        N = len(rollouts)
        chunks = [r["chunks"] for r in rollouts]
        lengths = [len(c) for c in chunks]
        if min(lengths) < 1:
            raise RuntimeError("RealEngine: a real episode executed no chunk")

        def at(i: int, t: int) -> dict[str, Any]:
            return chunks[i][min(t, lengths[i] - 1)]  # rows that ended repeat their last chunk (alive False)

        observations = [Observation.cat([at(i, t)["observation"] for i in range(N)]) for t in range(T)]
        samples = [ActionSample.cat([at(i, t)["sample"] for i in range(N)]) for t in range(T)]
        after = [[at(i, t)["after"] for t in range(T)] for i in range(N)]
        images = torch.from_numpy(np.stack([np.stack([a["image"] for a in row]) for row in after]))  # [N, T, H, W, 3]
        states = torch.from_numpy(np.stack([np.stack([a["state"] for a in row]) for row in after])).float()
        full = [[a["full_state"] for a in row] for row in after]
        full_states = (
            torch.from_numpy(np.stack([np.stack(row) for row in full])).float()
            if all(f.size for row in full for f in row)
            else None
        )  # [N, T, F]
        chunk_success = torch.tensor([[bool(at(i, t)["success"]) for t in range(T)] for i in range(N)])
        alive = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # [N, T]
        success = (chunk_success & alive).any(dim=1)  # [N]
        # Latents of the frame after chunk t: the next chunk's observation carries them; encode only the last frames.
        last = torch.tensor([min(n, T) - 1 for n in lengths])  # [N] last executed chunk
        final_latents = self.world.encode_images(images[torch.arange(N), last]).detach().cpu()  # [N, C, h, w]
        following = torch.stack([*(o.latents.cpu() for o in observations[1:]), final_latents], dim=1)  # [N, T, ...]
        # from its last executed chunk on, a row's frame is its final one (the later observations are padding)
        from_last = (torch.arange(T)[None, :] >= last[:, None]).view(N, T, *[1] * (final_latents.dim() - 1))
        subgoal_latents = torch.where(from_last, final_latents[:, None], following)  # [N, T, C, h, w]
        steps = torch.tensor([sum(c["steps"] for c in chunks[i]) for i in range(N)], dtype=torch.long)
        return Trajectories(
            observations=observations,
            samples=samples,
            subgoal_images=images,
            subgoal_latents=subgoal_latents,
            states=states,
            success_logits=torch.where(chunk_success, SUCCESS_LOGIT, -SUCCESS_LOGIT).float(),
            alive=alive,
            success=success,
            instructions=list(observations[0].instructions),
            task_names=list(observations[0].task_names),
            group_size=G,
            action_bounds=(-1.0, 1.0),
            full_states=full_states,
            env_steps=steps,
            engine="real",
        )
