"""Policy rollouts in a real simulator: parallel, seeded, fault tolerant; episodes in the dataset schema.

`rollout_policy` runs a policy (a `WLAPolicy`, or any callable ``Observation -> [N, H, A]``) for
`episodes_per_task` episodes of every task:

- **Seeds.** Episode e of every task is reset with ``seed = base_seed + e`` (or ``seeds[e]`` when a list is
  given), so the same start states are evaluated at every call and checkpoints compare pairwise.
- **Action chunks.** The policy is queried on all running episodes at once (one batched call of N rows);
  each of the H actions of a chunk is clipped to the action space and executed open-loop, then the policy
  re-plans. An episode ends at the first success (``info["success"]``, when `stop_on_success`), when the env
  terminates or truncates, or after `max_episode_steps` steps.
- **Workers.** `num_workers` processes, each running `slots_per_worker` episodes at once (envs lent per task
  by one cache per process, built lazily). One message per worker and chunk carries the requests of all its
  slots (a reset or a whole chunk each). ``num_workers=0`` runs in the calling process (debugging).
- **Faults.** A worker that dies (crash, ``os._exit``, killed) or stops answering for `worker_timeout_s` is
  reported in `RealRolloutResult.worker_failures`; the episodes it was running are **re-run from their seeds**
  on a surviving worker, or on a replacement started at once when the workers come from a pool (at most
  `max_retries` times), and reported as lost once retries are exhausted or no worker survives. An env that raises a Python exception is handled the same way (the worker survives, its
  env for that task is rebuilt). The whole call never takes longer than `timeout_s` (plus the time to stop
  workers): then every unfinished episode is reported as lost and `timed_out` is set.

Episodes come back as dicts in the input format of `wlarl.data.write_episodes` (T+1 observations, T actions,
``noise_mode = "policy"``), which writes them in the dataset schema of `docs/internals.md`:
``write_episodes(result.episodes, path, meta)``.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import wait as mp_wait
from typing import Any

import numpy as np

from wlarl.utils.stats import success_summary

EnvFn = Callable[..., Any]
PolicyLike = Any  # a WLAPolicy (has .act) or a callable Observation -> [N, H, A]


# ----------------------------------------------------------------------------------------------- results
@dataclass
class EpisodeOutcome:
    """Summary of one finished episode."""

    task: str
    episode: int
    seed: int
    success: bool
    length: int
    worker: int
    attempts: int


@dataclass
class RealRolloutResult:
    """What `rollout_policy` returns.

    Attributes:
        outcomes: one `EpisodeOutcome` per finished episode, ordered by (task, episode).
        episodes: per finished episode a dict in the input format of `wlarl.data.write_episodes` (see
            `_finish_episode`; empty when `keep_episodes=False`), same order as `outcomes`.
        videos: ``"<task>_ep<e>"`` → uint8 [T+1, H, W, 3] frames of the first `record_video` episodes per task.
        lost: episodes that did not finish: dicts with task, episode, seed and reason.
        worker_failures: one message per worker death, hang or env exception.
        timed_out: True when `timeout_s` ran out before every episode finished.
        tasks: the tasks asked for (in order).
        chunk_size: H of the policy's action chunks (0 when no chunk was executed).
        env_steps: env steps executed in finished and unfinished episodes.
        wall_s: duration of the call.
        rollouts: with `record_samples`, per finished episode (same order as `outcomes`) a dict: `chunks`, one
            entry per executed chunk with the `observation` the policy acted on (a 1-row `Observation`, latents
            included), its `sample` (a 1-row `ActionSample`), the observation dict `after` it, whether a step of it
            succeeded (`success`), its env `steps` and summed `reward`; and `sim_state` (MuJoCo state at reset, or
            None). Empty otherwise.
        episodes_started: episodes begun in the simulator, re-runs included (what the call cost in real episodes).
        policy_s: seconds spent in policy calls (the rest of `wall_s` is simulation, transfer and waiting).
    """

    outcomes: list[EpisodeOutcome]
    episodes: list[dict[str, list]]
    videos: dict[str, np.ndarray]
    lost: list[dict[str, Any]]
    worker_failures: list[str]
    timed_out: bool
    tasks: list[str]
    chunk_size: int
    env_steps: int
    wall_s: float
    rollouts: list[dict[str, Any]] = None  # type: ignore[assignment]
    episodes_started: int = 0
    policy_s: float = 0.0

    def __post_init__(self) -> None:
        if self.rollouts is None:
            self.rollouts = []

    @property
    def success_by_task(self) -> dict[str, list[bool]]:
        """task → [E_task] successes of its finished episodes (ordered by episode index)."""
        out: dict[str, list[bool]] = {t: [] for t in self.tasks}
        for o in self.outcomes:
            out.setdefault(o.task, []).append(o.success)
        return out

    @property
    def success(self) -> np.ndarray:
        """bool [E] success of every finished episode, in `outcomes` order."""
        return np.array([o.success for o in self.outcomes], dtype=bool)

    @property
    def episode_lengths(self) -> np.ndarray:
        """int [E] env steps of every finished episode."""
        return np.array([o.length for o in self.outcomes], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """Mean success (pooled over finished episodes) with its 95 % Wilson interval, and the same per task."""
        per_task = {t: success_summary(s) for t, s in self.success_by_task.items()}
        pooled = success_summary(self.success)
        lengths = self.episode_lengths
        return {
            "success": pooled["success"],
            "ci_low": pooled["ci_low"],
            "ci_high": pooled["ci_high"],
            "episodes": pooled["n"],
            "per_task": per_task,
            "episode_length": float(lengths.mean()) if lengths.size else float("nan"),
            "lost": len(self.lost),
            "worker_failures": len(self.worker_failures),
            "timed_out": self.timed_out,
            "wall_s": self.wall_s,
        }

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat metrics: ``{prefix}/real_success`` (+ ``_ci_low``/``_ci_high``), ``{prefix}/<task>/success``, …"""
        s = self.summary()
        m = {
            **self.success_metrics(prefix),
            f"{prefix}/episode_length": s["episode_length"],
            f"{prefix}/episodes": float(s["episodes"]),
            f"{prefix}/lost_episodes": float(s["lost"]),
            f"{prefix}/worker_failures": float(s["worker_failures"]),
            f"{prefix}/timed_out": float(s["timed_out"]),
            f"{prefix}/wall_s": s["wall_s"],
            f"{prefix}/env_steps_per_s": self.env_steps / max(self.wall_s, 1e-9),
        }
        return m

    def success_metrics(self, prefix: str = "eval", suffix: str = "") -> dict[str, float]:
        """Success with 95 % Wilson intervals: ``{prefix}/real_success{suffix}`` (+ ``_ci_low``/``_ci_high``) and
        ``{prefix}/<task>/success{suffix}`` (+ intervals); e.g. suffix "_sampled" for the sampled policy."""
        s = self.summary()
        m = {
            f"{prefix}/real_success{suffix}": s["success"],
            f"{prefix}/real_success{suffix}_ci_low": s["ci_low"],
            f"{prefix}/real_success{suffix}_ci_high": s["ci_high"],
        }
        for task, ts in s["per_task"].items():
            m[f"{prefix}/{task}/success{suffix}"] = ts["success"]
            m[f"{prefix}/{task}/success{suffix}_ci_low"] = ts["ci_low"]
            m[f"{prefix}/{task}/success{suffix}_ci_high"] = ts["ci_high"]
        return m


# ----------------------------------------------------------------------------------------------- workers
def _resolve_env_fn(env_fn: EnvFn | str | None) -> EnvFn:
    if env_fn is None:
        env_fn = "rollout.sims:make_env"
    if isinstance(env_fn, str):
        module, _, attr = env_fn.partition(":")
        if not attr:
            raise ValueError(f"env_fn {env_fn!r}: expected 'package.module:callable'")
        return getattr(importlib.import_module(module), attr)
    if not callable(env_fn):
        raise TypeError(f"env_fn: expected a callable task -> gymnasium.Env or 'module:callable', got {env_fn!r}")
    return env_fn


def _pack_obs(obs: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(obs, dict) or "image" not in obs or "state" not in obs:
        got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise ValueError(f"real env observation: expected a dict with 'image', 'state', 'instruction', got {got}")
    image = np.asarray(obs["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"real env observation 'image': expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    full = obs.get("full_state", info.get("full_state"))
    return {
        "image": image.copy(),
        "state": np.asarray(obs["state"], dtype=np.float32).copy(),
        "full_state": np.asarray(full, dtype=np.float32).copy() if full is not None else np.zeros(0, np.float32),
        "instruction": str(obs.get("instruction", "")),
    }


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001 - a broken env may fail to close; it is discarded anyway
        pass


class _EnvCache:
    """The envs of one process by task. An episode borrows a free env of its task (building one when none is free)
    and gives it back when the next episode of its slot begins; at most `capacity` envs are kept, idle envs of the
    least recently used tasks closed first."""

    def __init__(self, env_fn: EnvFn | str | None, env_kwargs: dict[str, Any], capacity: int = 48):
        self.env_fn = _resolve_env_fn(env_fn)
        self.env_kwargs = env_kwargs
        self.capacity = max(int(capacity), 1)
        self.free: dict[str, list[Any]] = {}
        self.count = 0  # envs alive (free or borrowed)
        self._clock = 0
        self._used: dict[str, int] = {}  # task -> last use

    def acquire(self, task: str) -> Any:
        self._clock += 1
        self._used[task] = self._clock
        if self.free.get(task):
            return self.free[task].pop()
        while self.count >= self.capacity and any(self.free.values()):
            oldest = min((t for t, envs in self.free.items() if envs), key=lambda t: self._used.get(t, 0))
            self.discard(self.free[oldest].pop())
        env = self.env_fn(task, **self.env_kwargs)
        self.count += 1
        return env

    def release(self, task: str, env: Any) -> None:
        self.free.setdefault(task, []).append(env)

    def discard(self, env: Any) -> None:
        self.count -= 1
        _close_quietly(env)

    def close(self) -> None:
        for envs in self.free.values():
            for env in envs:
                self.discard(env)
        self.free = {}


class _EnvRunner:
    """Executes reset/chunk requests of one episode slot; lives in a worker process (one per slot, sharing the
    process's env cache) or in-process."""

    def __init__(
        self,
        env_fn: EnvFn | str | None,
        env_kwargs: dict[str, Any],
        max_episode_steps: int | None,
        stop_on_success: bool,
        cache: _EnvCache | None = None,
    ):
        self.own_cache = cache is None
        self.cache = cache if cache is not None else _EnvCache(env_fn, env_kwargs)
        self.max_episode_steps = max_episode_steps
        self.stop_on_success = stop_on_success
        self.task: str | None = None
        self.env = None
        self.obs: dict[str, Any] | None = None
        self.steps = 0
        self.limit = 0
        self.episode_limit = max_episode_steps
        self.episode_stop = stop_on_success

    def reset(
        self, task: str, seed: int, max_episode_steps: int | None = None, stop_on_success: bool | None = None
    ) -> dict[str, Any]:
        """Reset the env of `task` with `seed`; the episode settings default to the runner's."""
        self.episode_limit = max_episode_steps if max_episode_steps is not None else self.max_episode_steps
        self.episode_stop = self.stop_on_success if stop_on_success is None else bool(stop_on_success)
        if self.env is not None and self.task != task:
            self.cache.release(self.task, self.env)
            self.env = None
        if self.env is None:
            self.env = self.cache.acquire(task)
        self.task = task
        obs, info = self.env.reset(seed=int(seed))
        self.obs = _pack_obs(obs, info)
        self.steps = 0
        spec_limit = getattr(getattr(self.env, "spec", None), "max_episode_steps", None)
        self.limit = int(self.episode_limit or spec_limit or 500)
        space = self.env.action_space
        sim_state = getattr(self.env, "sim_state", None)
        return {
            "obs": self.obs,
            "low": np.asarray(space.low, np.float32),
            "high": np.asarray(space.high, np.float32),
            # the MuJoCo state right after the reset (when the env exposes it): equal seeds must give equal states
            "sim_state": np.asarray(sim_state(), np.float64) if callable(sim_state) else None,
        }

    def chunk(self, actions: np.ndarray, frames: str = "all") -> dict[str, Any]:
        """Execute up to H actions [H, A]; returns the steps taken, the new observation and whether it ended.

        With ``frames="chunk"`` only the observation after the chunk carries a rendered frame (the per-step records
        carry none): an env that can render on demand (`render_images` and `refresh_frame`) then renders once per
        chunk instead of once per step.
        """
        space = self.env.action_space
        steps, done, success = [], False, False
        lazy = (
            frames == "chunk"
            and hasattr(self.env, "render_images")
            and callable(getattr(self.env, "refresh_frame", None))
        )
        rendering = getattr(self.env, "render_images", None)
        if lazy:
            self.env.render_images = False
        try:
            for a in actions:
                a = np.clip(np.asarray(a, dtype=np.float32), space.low, space.high)
                obs, reward, terminated, truncated, info = self.env.step(a)
                self.steps += 1
                success = bool(info.get("success", False))
                before = self.obs if frames == "all" else {k: v for k, v in self.obs.items() if k != "image"}
                steps.append({**before, "action": a, "reward": float(reward), "success": success})
                self.obs = _pack_obs(obs, info)
                done = bool(terminated or truncated) or self.steps >= self.limit or (self.episode_stop and success)
                if done:
                    break
            if lazy:
                self.obs["image"] = np.asarray(self.env.refresh_frame(), np.uint8).copy()
        finally:
            if lazy:
                self.env.render_images = rendering
        return {"steps": steps, "obs": self.obs, "done": done}

    def handle(self, cmd: str, payload: Any) -> Any:
        if cmd == "reset":
            return self.reset(*payload)
        if cmd == "chunk":
            if isinstance(payload, tuple):  # (actions [H, A], frames)
                return self.chunk(*payload)
            return self.chunk(payload)
        raise ValueError(f"real env worker: unknown command {cmd!r}")

    def drop_env(self) -> None:
        """Discard the env of the current episode (it raised); the next reset builds or borrows another."""
        if self.env is not None:
            self.cache.discard(self.env)
        self.env, self.task = None, None

    def close(self) -> None:
        if self.env is not None:
            self.cache.release(self.task, self.env)
            self.env, self.task = None, None
        if self.own_cache:
            self.cache.close()


def _worker_main(
    conn, env_fn, env_kwargs, max_episode_steps, stop_on_success, slots=1
) -> None:  # pragma: no cover - subprocess
    """A worker process: `slots` episode slots over one env cache. Each message is a batch of (slot, command,
    payload) requests, answered by one batch of (slot, status, result) replies."""
    runners: list[_EnvRunner] = []
    cache = None
    try:
        cache = _EnvCache(env_fn, env_kwargs, capacity=max(48, 4 * slots))
        runners = [_EnvRunner(None, env_kwargs, max_episode_steps, stop_on_success, cache=cache) for _ in range(slots)]
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            replies = []
            for slot, cmd, payload in msg[1]:
                try:
                    replies.append((slot, "ok", runners[slot].handle(cmd, payload)))
                except Exception:  # noqa: BLE001 - reported to the parent, which re-runs the episode elsewhere
                    runners[slot].drop_env()
                    replies.append((slot, "error", traceback.format_exc()))
            conn.send(("batch", replies))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        for r in runners:
            r.close()
        if cache is not None:
            cache.close()
        conn.close()


class _Worker:
    """Parent-side handle of one worker process (or of in-process runners when `proc` is None) and its slots."""

    def __init__(
        self, index: int, ctx, env_fn, env_kwargs, max_episode_steps, stop_on_success, in_process: bool, slots: int = 1
    ):
        self.index = index
        self.alive = True
        self.outbox: list[tuple[int, str, Any]] = []  # requests of this iteration, sent as one batch
        self.in_flight = 0  # batches sent and not yet answered
        self.sent_at: float | None = None
        if in_process:
            self.proc = None
            self.conn = None
            cache = _EnvCache(env_fn, env_kwargs)
            self.cache = cache
            runners = [
                _EnvRunner(None, env_kwargs, max_episode_steps, stop_on_success, cache=cache) for _ in range(slots)
            ]
        else:
            self.cache = None
            runners = [None] * slots
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(
                target=_worker_main,
                args=(child, env_fn, env_kwargs, max_episode_steps, stop_on_success, slots),
                name=f"wlarl-real-env-{index}",
                daemon=True,
            )
            self.proc.start()
            child.close()
        self.slots = [_Slot(self, k, runners[k]) for k in range(slots)]

    def flush(self) -> None:
        """Send this iteration's requests as one batch."""
        if self.proc is None or not self.outbox:
            return
        batch, self.outbox = self.outbox, []
        self.conn.send(("batch", batch))
        self.in_flight += 1
        self.sent_at = time.monotonic()

    def kill(self) -> None:
        self.alive = False
        self.outbox, self.in_flight = [], 0
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
            self.conn.close()

    def close(self) -> None:
        if self.proc is None:
            for s in self.slots:
                s.runner.close()
            self.cache.close()
            return
        if self.alive and self.proc.is_alive():
            try:
                self.conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class _Slot:
    """One episode slot of a worker: runs one episode at a time (the rollout loop's unit of work)."""

    def __init__(self, worker: _Worker, slot: int, runner: _EnvRunner | None):
        self.worker = worker
        self.slot = slot
        self.runner = runner  # in-process only
        self.job: dict[str, Any] | None = None  # the episode being run
        self.waiting_since: float | None = None  # time of the outstanding request
        self._local_reply: tuple[str, Any] | None = None

    @property
    def index(self) -> int:
        return self.worker.index

    @property
    def alive(self) -> bool:
        return self.worker.alive

    def send(self, cmd: str, payload: Any) -> None:
        self.waiting_since = time.monotonic()
        if self.runner is None:
            self.worker.outbox.append((self.slot, cmd, payload))
            return
        try:
            self._local_reply = ("ok", self.runner.handle(cmd, payload))
        except Exception:  # noqa: BLE001 - same contract as a worker process
            self.runner.drop_env()
            self._local_reply = ("error", traceback.format_exc())


class EnvWorkerPool:
    """Real-simulator worker processes that outlive one `rollout_policy` call.

    Starting a worker, a process that imports the simulator and builds its envs, costs several seconds. An
    evaluation every few GRPO steps with a pool pays that once. Workers that died, hung or were killed are replaced
    on the next call. Episode settings such as step limit and stop-on-success travel with each episode, so one
    pool serves evaluation and verification alike. Close it (or use it as a context manager) when done; its
    processes are daemons and also end with the parent.

    Args:
        num_workers: worker processes (≥ 1).
        env_fn, env_kwargs: how a worker builds the env of a task (see `rollout_policy`).
        start_method: multiprocessing start method ("spawn" is safe with MuJoCo/EGL and threads).
        slots_per_worker: episodes each worker runs at once (one env each, built per task and reused). More slots
            mean larger batched policy calls: the real engine's G·B rows then advance together.
    """

    def __init__(
        self,
        num_workers: int,
        env_fn: EnvFn | str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        start_method: str = "spawn",
        slots_per_worker: int = 1,
    ):
        if int(num_workers) < 1:
            raise ValueError(f"EnvWorkerPool: num_workers must be ≥ 1, got {num_workers}")
        if int(slots_per_worker) < 1:
            raise ValueError(f"EnvWorkerPool: slots_per_worker must be ≥ 1, got {slots_per_worker}")
        self.num_workers = int(num_workers)
        self.slots_per_worker = int(slots_per_worker)
        self.env_fn = env_fn
        self.env_kwargs = dict(env_kwargs or {})
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._next_index = 0
        self.started = 0  # worker processes started over the pool's life
        self.closed = False

    def matches(self, env_fn: EnvFn | str | None, env_kwargs: dict[str, Any] | None) -> bool:
        return env_fn == self.env_fn and dict(env_kwargs or {}) == self.env_kwargs

    def _start(self) -> _Worker:
        w = _Worker(
            self._next_index, self._ctx, self.env_fn, self.env_kwargs, None, True, False, self.slots_per_worker
        )
        self._next_index += 1
        self.started += 1
        return w

    def take(self, n: int) -> list[_Worker]:
        """Idle workers whose slots hold `n` episodes (at most num_workers), starting fresh ones for any that died."""
        if self.closed:
            raise RuntimeError("EnvWorkerPool: the pool is closed")
        self._workers = [w for w in self._workers if w.alive and w.proc is not None and w.proc.is_alive()]
        want = min(max(-(-int(n) // self.slots_per_worker), 1), self.num_workers)
        while len(self._workers) < want:
            self._workers.append(self._start())
        workers = self._workers[:want]
        for w in workers:
            w.outbox, w.in_flight, w.sent_at = [], 0, None
            for s in w.slots:
                s.job, s.waiting_since, s._local_reply = None, None, None
        return workers

    def replace(self, dead: _Worker) -> _Worker:
        """A fresh worker in place of `dead` (which died, hung or was killed), started now."""
        if self.closed:
            raise RuntimeError("EnvWorkerPool: the pool is closed")
        self._workers = [w for w in self._workers if w is not dead]
        fresh = self._start()
        self._workers.append(fresh)
        return fresh

    def close(self) -> None:
        for w in self._workers:
            if w.alive:
                w.close()
        self._workers = []
        self.closed = True

    def __enter__(self) -> EnvWorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- policy
def _policy_actions(
    policy: PolicyLike,
    obs_rows: list[dict[str, Any]],
    tasks: list[str],
    sample: bool = False,
    temperature: float = 1.0,
    record: bool = False,
) -> tuple[np.ndarray, list[str], tuple[Any, Any] | None]:
    """Query the policy on N rows: returns actions float32 [N, H, A], N subtask strings and, with `record`, the
    (Observation with latents, ActionSample) of the call (None otherwise).

    A `WLAPolicy` acts greedily (`sample` False) or samples at `temperature`; a callable policy is deterministic.
    """
    import torch

    from wlarl.types import Observation

    obs = Observation.from_dicts({**o, "task_name": t} for o, t in zip(obs_rows, tasks))
    subtasks = [""] * len(obs_rows)
    recorded = None
    is_wla = hasattr(policy, "act") and isinstance(policy, torch.nn.Module)
    if record and not is_wla:
        raise TypeError(
            f"policy: recording samples needs a WLAPolicy (act(obs) -> ActionSample); got a {type(policy).__name__}"
        )
    if is_wla:
        device = next(policy.parameters()).device
        with torch.no_grad():
            obs = obs.to(device)
            if record:
                # The latents travel with the observation, so the update rescores exactly the input of sampling.
                obs = replace(obs, latents=policy.encode_images(obs.images).detach())
            action = policy.act(obs, sample=sample, temperature=temperature)
        actions = action.actions
        subtasks = list(action.subtask_text)
        if record:
            recorded = (obs, action.detach())
    elif sample:
        raise TypeError(
            f"policy: sampled rollouts need a WLAPolicy (act(obs, sample=True)); got a {type(policy).__name__}"
        )
    elif callable(policy):
        with torch.no_grad():
            actions = policy(obs)
    else:
        raise TypeError(
            f"policy: expected a WLAPolicy or a callable Observation -> [N, H, A], got {type(policy).__name__}"
        )
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().float().cpu().numpy()
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim == 2:  # [N, A]: a single action per query
        actions = actions[:, None]
    if actions.ndim != 3 or actions.shape[0] != len(obs_rows):
        raise ValueError(f"policy: expected actions [N={len(obs_rows)}, H, A], got shape {actions.shape}")
    if not np.isfinite(actions).all():
        raise ValueError("policy: returned non-finite actions")
    return actions, subtasks, recorded


# ----------------------------------------------------------------------------------------------- episodes
def _finish_episode(job: dict[str, Any]) -> dict[str, Any]:
    """One episode in the input format of `wlarl.data.write_episodes`.

    Returns:
        `image` uint8 [T+1, H, W, 3], `state` float32 [T+1, S], `full_state` [T+1, F] (only when the env gives
        it), `action` float32 [T, A] (as executed, clipped), `reward` [T], `success` bool [T], `subtask` T+1
        strings (the policy's subtask for each step's chunk), and the scalars `instruction`, `task_name`,
        `seed`, `noise_mode` ("policy"), `episode_success`.
    """
    steps, last = job["steps"], job["obs"]
    rows = [*steps, last]
    subtasks = list(job["subtasks"])
    ep = {
        "image": np.stack([r["image"] for r in rows]),  # [T+1, H, W, 3]
        "state": np.stack([r["state"] for r in rows]),  # [T+1, S]
        "action": np.stack([np.asarray(s["action"], np.float32) for s in steps]),  # [T, A]
        "reward": np.array([s["reward"] for s in steps], np.float32),  # [T]
        "success": np.array([s["success"] for s in steps], bool),  # [T]
        "subtask": [*subtasks, subtasks[-1] if subtasks else ""],
        "instruction": last["instruction"],
        "task_name": job["task"],
        "seed": int(job["seed"]),
        "noise_mode": "policy",
        "episode_success": bool(any(s["success"] for s in steps)),
    }
    if all(r["full_state"].size for r in rows):
        ep["full_state"] = np.stack([r["full_state"] for r in rows])  # [T+1, F]
    return ep


def episode_seeds(episodes_per_task: int, seeds: int | Sequence[int] = 0) -> list[int]:
    """Reset seeds of episodes 0..E-1: ``base_seed + e`` for an int, the list itself otherwise."""
    if isinstance(seeds, (int, np.integer)):
        return [int(seeds) + e for e in range(episodes_per_task)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != episodes_per_task:
        raise ValueError(f"seeds: expected {episodes_per_task} seeds (one per episode), got {len(seeds)}")
    return seeds


RESET_START_SEED = 100_000  # seeds of reset start states: far from evaluation (0 + e) and verification (10 000 + e)


def reset_start_states(
    tasks: Sequence[str],
    num_starts: int,
    seed: int = RESET_START_SEED,
    *,
    env_fn: EnvFn | str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Start states from seeded resets of the real simulator, made once in this process.

    For every task, `num_starts` resets with seeds ``seed + i`` (i < num_starts): the same seed gives the same
    start, and each start can be rebuilt in the real simulator from its task and seed.

    Args:
        tasks: simulator task names.
        num_starts: resets per task.
        seed: seed of the first reset of every task.
        env_fn, env_kwargs: how to build the env of a task (see `rollout_policy`; the camera and image size of
            training should be passed here).

    Returns:
        len(tasks) · num_starts dicts: `image` uint8 [H, W, 3], `state` float32 [S], `full_state` float32 [F],
        `instruction`, `task_name`, `seed`, `step_index` (0).
    """
    if num_starts < 1:
        raise ValueError(f"reset_start_states: num_starts must be ≥ 1, got {num_starts}")
    if not tasks:
        raise ValueError("reset_start_states: expected at least one task")
    runner = _EnvRunner(env_fn, dict(env_kwargs or {}), None, True)
    starts = []
    try:
        for task in tasks:
            for i in range(int(num_starts)):
                obs = runner.reset(str(task), int(seed) + i)["obs"]
                starts.append({**obs, "task_name": str(task), "seed": int(seed) + i, "step_index": 0})
    finally:
        runner.close()
    return starts


# ----------------------------------------------------------------------------------------------- main entry
def rollout_policy(
    policy: PolicyLike,
    tasks: Sequence[str],
    episodes_per_task: int,
    seeds: int | Sequence[int] = 0,
    num_workers: int = 2,
    max_episode_steps: int | None = None,
    record_video: int = 0,
    timeout_s: float = 1800.0,
    *,
    env_fn: EnvFn | str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    stop_on_success: bool = True,
    keep_episodes: bool = True,
    max_retries: int = 1,
    worker_timeout_s: float = 300.0,
    start_method: str = "spawn",
    pool: EnvWorkerPool | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    jobs: Sequence[tuple[str, int]] | None = None,
    frames: str = "all",
    record_samples: bool = False,
    slots_per_worker: int = 1,
    progress: bool = False,
) -> RealRolloutResult:
    """Run `policy` in the real simulator for `episodes_per_task` seeded episodes of every task.

    Args:
        policy: a `WLAPolicy` (queried with ``act(obs, sample=sample, temperature=temperature)``) or a callable
            ``Observation [N] -> actions [N, H, A]`` (tensor or array; [N, A] is read as H = 1).
        tasks: task names passed to `env_fn`.
        episodes_per_task: E episodes per task.
        seeds: base seed (episode e uses ``seeds + e``) or E explicit seeds; the same for every task.
        num_workers: env worker processes (0: run in this process). Capped at the number of episodes.
        max_episode_steps: step limit per episode (default: the env spec's, else 500).
        record_video: keep the frames of the first `record_video` episodes of every task in `videos`.
        timeout_s: wall-clock budget of the whole call; unfinished episodes are reported lost.
        env_fn: ``env_fn(task, **env_kwargs) -> gymnasium.Env`` with the real-simulator observation dict, or
            ``"module:callable"``; picklable for worker processes. Default ``rollout.sims:make_env``.
        env_kwargs: extra keyword arguments of `env_fn`.
        stop_on_success: end an episode at its first successful step.
        keep_episodes: return the per-step episodes (set False to save memory in long evaluations).
        max_retries: re-runs of an episode whose worker died before it is reported lost.
        worker_timeout_s: a worker silent this long on one request is killed and counted as failed.
        start_method: multiprocessing start method ("spawn" is safe with MuJoCo/EGL and threads).
        pool: run on these persistent workers instead of starting `num_workers` new ones (`num_workers` is then
            ignored; the pool must have been built with the same `env_fn` and `env_kwargs`).
        sample: the `WLAPolicy` samples its subtasks and action chunks (what GRPO trains) instead of acting greedily.
        temperature: sampling temperature (with `sample`).
        jobs: explicit episodes as (task, seed) pairs, run instead of `tasks` × `episodes_per_task` (`tasks`,
            `episodes_per_task` and `seeds` are then ignored); episode j of the result is jobs[j], and results come
            back in jobs order. A pair may repeat (G samples of one start).
        frames: "all" renders every step's frame of the episodes that need it (all with `keep_episodes`, else the
            first `record_video` per task) and only the frame after each chunk of the others (what the policy reads
            next; several times faster); "chunk" renders only chunk boundaries (needs keep_episodes=False,
            record_video=0).
        record_samples: keep per episode what a policy-gradient update needs (`RealRolloutResult.rollouts`): the
            observation (with latents) and the `ActionSample` of every chunk. Needs a `WLAPolicy`.
        slots_per_worker: episodes each new worker runs at once (without `pool`; a pool has its own), so that a
            batched policy call covers num_workers × slots_per_worker episodes.
        progress: show a progress bar of finished episodes with their running success rate.

    Returns:
        A `RealRolloutResult`.
    """
    t_start = time.monotonic()
    deadline = t_start + float(timeout_s)
    if frames not in ("all", "chunk"):
        raise ValueError(f"rollout_policy: frames must be 'all' or 'chunk', got {frames!r}")
    if frames == "chunk" and (keep_episodes or record_video):
        raise ValueError(
            "rollout_policy: frames='chunk' renders only chunk boundaries; whole episodes and videos need every "
            "frame: pass keep_episodes=False and record_video=0, or frames='all'"
        )
    if jobs is not None:
        jobs = [(str(t), int(sd)) for t, sd in jobs]
        if not jobs:
            raise ValueError("rollout_policy: jobs is empty; expected (task, seed) pairs")
        tasks = list(dict.fromkeys(t for t, _ in jobs))
        queue: deque[dict[str, Any]] = deque(
            {"task": t, "episode": j, "seed": sd, "attempts": 0} for j, (t, sd) in enumerate(jobs)
        )
    else:
        tasks = list(tasks)
        if not tasks:
            raise ValueError("rollout_policy: expected at least one task")
        if episodes_per_task < 1:
            raise ValueError(f"rollout_policy: episodes_per_task must be >= 1, got {episodes_per_task}")
        seed_list = episode_seeds(episodes_per_task, seeds)
        # Episode-major order: the episodes running at once span the tasks, so each worker needs few envs per task
        # (results are ordered by task and episode all the same).
        queue = deque(
            {"task": t, "episode": e, "seed": seed_list[e], "attempts": 0}
            for e in range(episodes_per_task)
            for t in tasks
        )
    n_total = len(queue)
    if pool is not None:
        if not pool.matches(env_fn, env_kwargs):
            raise ValueError(
                "rollout_policy: the worker pool was built for other env settings "
                f"(env_fn={pool.env_fn!r}, env_kwargs={pool.env_kwargs}); got env_fn={env_fn!r}, env_kwargs={env_kwargs}"
            )
        procs = pool.take(n_total)
    else:
        per = max(int(slots_per_worker), 1)
        n_workers = min(max(int(num_workers), 0), -(-n_total // per))
        ctx = mp.get_context(start_method) if n_workers else None
        procs = [
            _Worker(i, ctx, env_fn, dict(env_kwargs or {}), max_episode_steps, stop_on_success, n_workers == 0, per)
            for i in range(max(n_workers, 1))
        ]
    slots = [sl for p in procs for sl in p.slots]
    finished: dict[tuple[str, int], tuple[EpisodeOutcome, dict[str, Any]]] = {}
    lost: list[dict[str, Any]] = []
    failures: list[str] = []
    chunk_size = 0
    env_steps = 0
    started = 0
    policy_s = 0.0
    timed_out = False

    def frames_of(job: dict[str, Any]) -> str:
        """Every step's frame only for episodes returned whole or recorded as video; else the chunk boundaries."""
        return "all" if frames == "all" and (keep_episodes or job["episode"] < record_video) else "chunk"

    def requeue(sl: _Slot, reason: str) -> None:
        job, sl.job, sl.waiting_since = sl.job, None, None
        if job is None:
            return
        job = {"task": job["task"], "episode": job["episode"], "seed": job["seed"], "attempts": job["attempts"] + 1}
        if job["attempts"] <= max_retries:
            queue.appendleft(job)  # re-run from its seed on a surviving (or replacement) worker
        else:
            lost.append({**job, "reason": f"failed {job['attempts']} time(s): {reason.splitlines()[-1]}"})

    def during(jobs_of: list[_Slot]) -> str:
        names = [f"{sl.job['task']} seed {sl.job['seed']}" for sl in jobs_of if sl.job is not None]
        return f" (during {', '.join(names)})" if names else ""

    def fail_process(p: _Worker, reason: str) -> None:
        """A worker process died or hung: kill it, re-queue its episodes, replace it when it belongs to a pool."""
        failures.append(f"worker {p.index}: {reason}" + during(p.slots))
        p.kill()
        for sl in p.slots:
            requeue(sl, reason)
        if pool is not None and (queue or any(sl.job is not None for sl in slots if sl.alive)):
            fresh = pool.replace(p)
            procs.append(fresh)
            slots.extend(fresh.slots)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(queue), desc="real episodes", unit="ep", disable=not progress, dynamic_ncols=True)
    successes = 0
    try:
        while queue or any(sl.job is not None for sl in slots if sl.alive):
            alive = [sl for sl in slots if sl.alive]
            if not alive:
                break
            # --- hand new episodes to idle slots (a reset request each)
            for sl in alive:
                if sl.job is None and queue:
                    job = queue.popleft()
                    sl.job = {
                        **job,
                        "steps": [],
                        "subtasks": [],
                        "obs": None,
                        "done": False,
                        "low": None,
                        "chunks": [],
                    }
                    sl.send("reset", (job["task"], job["seed"], max_episode_steps, stop_on_success))
                    started += 1
            for p in procs:
                if p.alive:
                    p.flush()
            # --- collect every outstanding reply (resets and chunks), watching for deaths, hangs and the deadline
            replies: dict[int, tuple[str, Any]] = {}
            for sl in alive:
                if sl.runner is not None and sl._local_reply is not None:
                    replies[id(sl)] = sl._local_reply
                    sl._local_reply = None
            pending = {p.conn: p for p in procs if p.alive and p.proc is not None and p.in_flight > 0}
            while pending:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                ready = mp_wait(list(pending), timeout=min(1.0, deadline - now))
                for conn in ready:
                    p = pending[conn]
                    try:
                        _, batch = conn.recv()
                    except (EOFError, OSError, ConnectionResetError):
                        code = p.proc.exitcode
                        p.proc.join(timeout=1)
                        code = p.proc.exitcode if code is None else code
                        pending.pop(conn)
                        fail_process(p, f"process died (exit code {code})")
                        continue
                    p.in_flight -= 1
                    p.sent_at = time.monotonic() if p.in_flight else None
                    for k, status, result in batch:
                        replies[id(p.slots[k])] = (status, result)
                    if p.in_flight == 0:
                        pending.pop(conn)
                for conn, p in list(pending.items()):
                    if not p.proc.is_alive() and not conn.poll():
                        pending.pop(conn)
                        fail_process(p, f"process died (exit code {p.proc.exitcode})")
                    elif p.sent_at is not None and time.monotonic() - p.sent_at > worker_timeout_s:
                        pending.pop(conn)
                        fail_process(p, f"no reply within worker_timeout_s={worker_timeout_s}")
            if timed_out:
                break
            # --- apply replies: record steps, finish episodes
            for w in slots:
                if id(w) not in replies or not w.alive or w.job is None:
                    continue
                status, payload = replies[id(w)]
                w.waiting_since = None
                if status == "error":
                    failures.append(f"worker {w.index}: env raised:\n{payload}" + during([w]))
                    requeue(w, f"env raised:\n{payload}")
                    continue
                job = w.job
                if "steps" in payload:  # chunk reply
                    job["steps"].extend(payload["steps"])
                    job["subtasks"].extend([job["pending_subtask"]] * len(payload["steps"]))
                    env_steps += len(payload["steps"])
                    job["obs"], job["done"] = payload["obs"], payload["done"]
                    if record_samples:
                        job["chunks"].append(
                            {
                                **job.pop("pending_record"),
                                "after": payload["obs"],
                                "success": any(st["success"] for st in payload["steps"]),
                                "steps": len(payload["steps"]),
                                "reward": float(sum(st["reward"] for st in payload["steps"])),
                            }
                        )
                else:  # reset reply
                    job["obs"], job["low"] = payload["obs"], payload["low"]
                    job["sim_state"] = payload.get("sim_state")
                if job["done"]:
                    steps = job["steps"]
                    outcome = EpisodeOutcome(
                        task=job["task"],
                        episode=job["episode"],
                        seed=job["seed"],
                        success=any(s["success"] for s in steps),
                        length=len(steps),
                        worker=w.index,
                        attempts=job["attempts"] + 1,
                    )
                    finished[(job["task"], job["episode"])] = (outcome, job)
                    successes += outcome.success
                    bar.update(1)
                    bar.set_postfix(success=f"{successes / len(finished):.2f}")
                    w.job = None
            # --- one batched policy call for every running episode, then a chunk request each
            active = [w for w in slots if w.alive and w.job is not None and w.job["obs"] is not None]
            if not active:
                continue
            t_policy = time.monotonic()
            actions, subtasks, record = _policy_actions(
                policy, [w.job["obs"] for w in active], [w.job["task"] for w in active], sample, temperature,
                record=record_samples,
            )  # fmt: skip
            policy_s += time.monotonic() - t_policy
            chunk_size = chunk_size or actions.shape[1]
            for i, (w, a, sub) in enumerate(zip(active, actions, subtasks)):
                w.job["pending_subtask"] = sub
                if record is not None:
                    obs_b, sample_b = record
                    w.job["pending_record"] = {"observation": obs_b.index([i]), "sample": sample_b.index([i])}
                w.send("chunk", (a, frames_of(w.job)))  # [H, A]
            for p in procs:
                if p.alive:
                    p.flush()
            if time.monotonic() >= deadline:
                timed_out = True
                break
    finally:
        bar.close()
        for p in procs:
            if p.alive:
                if timed_out and p.proc is not None:
                    p.kill()  # may be stuck mid-request: do not wait for it (a pool replaces it next time)
                elif pool is None:
                    p.close()

    # Everything not finished is lost (timeout, or no surviving worker).
    reason = "timed out" if timed_out else "no surviving worker"
    for w in slots:
        if w.job is not None:
            lost.append(
                {
                    "task": w.job["task"],
                    "episode": w.job["episode"],
                    "seed": w.job["seed"],
                    "attempts": w.job["attempts"] + 1,
                    "reason": reason,
                }
            )
    lost.extend({**job, "reason": reason} for job in queue)

    order = sorted(finished, key=(lambda k: k[1]) if jobs is not None else (lambda k: (tasks.index(k[0]), k[1])))
    outcomes = [finished[k][0] for k in order]
    episodes: list[dict[str, list]] = []
    videos: dict[str, np.ndarray] = {}
    rollouts: list[dict[str, Any]] = []
    for k in order:
        outcome, job = finished[k]
        if record_samples:
            rollouts.append({"chunks": job["chunks"], "sim_state": job.get("sim_state")})
        if not outcome.length or frames_of(job) == "chunk":
            continue  # nothing executed (cannot happen with a positive step limit), or no per-step frames
        ep = _finish_episode(job)
        if keep_episodes:
            episodes.append(ep)
        if outcome.episode < record_video:
            videos[f"{outcome.task}_ep{outcome.episode}"] = ep["image"]  # [T+1, H, W, 3]
    return RealRolloutResult(
        outcomes=outcomes,
        episodes=episodes,
        videos=videos,
        lost=sorted(lost, key=lambda d: (tasks.index(d["task"]), d["episode"])),
        rollouts=rollouts,
        episodes_started=started,
        policy_s=policy_s,
        worker_failures=failures,
        timed_out=timed_out,
        tasks=tasks,
        chunk_size=int(chunk_size),
        env_steps=env_steps,
        wall_s=time.monotonic() - t_start,
    )


def make_real_evaluator(
    tasks: Sequence[str],
    episodes_per_task: int,
    seed: int = 0,
    num_workers: int = 2,
    max_episode_steps: int | None = None,
    num_videos: int = 1,
    timeout_s: float = 1800.0,
    prefix: str = "eval",
    sampled_temperature: float | None = None,
    **rollout_kwargs: Any,
) -> Callable[[PolicyLike, int], dict[str, Any]]:
    """An evaluator for `wlarl.trainer.callbacks.RealEvalCallback`: ``evaluator(policy, step) -> dict``.

    The dict holds the float metrics of `RealRolloutResult.metrics(prefix)` of the greedy policy and ``"videos"``:
    name → uint8 [T, H, W, 3] for the first `num_videos` episodes of every task. Seeds are the same at every call.
    With `sampled_temperature`, the same seeded episodes are run again with the policy sampling at that temperature
    (what GRPO optimises), logged as ``{prefix}/real_success_sampled`` and ``{prefix}/<task>/success_sampled`` with
    their Wilson intervals.
    """

    def run(policy: PolicyLike, **kwargs: Any) -> RealRolloutResult:
        return rollout_policy(
            policy, tasks, episodes_per_task, seeds=seed, num_workers=num_workers, max_episode_steps=max_episode_steps,
            timeout_s=timeout_s, keep_episodes=False, **kwargs, **rollout_kwargs,
        )  # fmt: skip

    def evaluator(policy: PolicyLike, step: int) -> dict[str, Any]:
        greedy = run(policy, record_video=num_videos)
        # "real_episodes" / "real_env_steps": the real interaction this evaluation cost (the run's budget)
        out = {
            **greedy.metrics(prefix),
            "videos": greedy.videos,
            "real_episodes": greedy.episodes_started,
            "real_env_steps": greedy.env_steps,
        }
        if sampled_temperature is not None:
            sampled = run(policy, record_video=0, sample=True, temperature=sampled_temperature)
            out.update(sampled.success_metrics(prefix, suffix="_sampled"))
            out[f"{prefix}/timed_out_sampled"] = float(sampled.timed_out)
            out["real_episodes"] += sampled.episodes_started
            out["real_env_steps"] += sampled.env_steps
        return out

    return evaluator
