"""Paired verification of imagination against the real simulator, and World-Expert fidelity.

- `paired_verification`: the same seeded start states are run by the policy in the real simulator and in
  imagination. Logged: the confusion matrix of imagined vs real success (``verify/tp|fp|fn|tn``,
  ``verify/agreement``), ``verify/imagination_gap`` (imagined − real success rate), the success reward
  model's precision/recall on the REAL frames against real outcomes, and the World Expert's open-loop error
  along the real trajectories.
- `world_fidelity`: open-loop replay (DreamerV3's report): encode the real first frame, imagine with the
  recorded real action chunks, compare the prediction after chunk k with the real frame at t = kH: PSNR
  (full frame and changed pixels only), latent MSE and state MSE per chunk, next to the baseline that copies
  the last observed frame (the first frame: in open loop nothing later is observed).
- `Verifier`: the object a `VerifyCallback` calls; it buffers the real episodes it gathers, which a
  `rollout.refresh.WorldRefresh` trains the simulator on.

The `grpo_world` recipe wires these into its callbacks; the refresh training loop lives in `rollout/refresh.py`.

Contracts of the injected callables:

- ``imagine_fn(policy, start_obs: Observation [N], seeds: list[int]) -> Trajectories`` (or anything with
  ``success`` bool [N] and, for videos, ``subgoal_images`` uint8 [N, T, H, W, 3]); `make_imagine_fn` builds
  it from an `ImaginationEngine`.
- ``success_scorer(images uint8 [N, H, W, 3], task_names) -> float [N]`` success probabilities (e.g.
  `SuccessClassifier.predict_proba`).
- A world model: ``encode_images``, ``imagine(obs, actions, decode=True) -> WorldPrediction``,
  ``next_observation`` (a `WLAPolicy` or its frozen snapshot).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rollout.real import PolicyLike, RealRolloutResult, episode_seeds, rollout_policy
from wlarl.data import window_rows
from wlarl.types import Observation
from wlarl.utils.stats import binary_confusion, changed_pixel_mask, nanmean, precision_recall, psnr
from wlarl.utils.video import side_by_side

logger = logging.getLogger(__name__)

ImagineFn = Callable[[PolicyLike, Observation, list[int]], Any]
SuccessScorer = Callable[[torch.Tensor, list[str]], torch.Tensor]


# ----------------------------------------------------------------------------------------------- episodes
def as_episode_list(episodes: Any) -> list[dict[str, Any]]:
    """Episodes as dicts with `image` uint8 [T+1, H, W, 3], `state` [T+1, S], `action` [T, A], `success` [T], …

    Accepts the dicts of `RealRolloutResult.episodes` (returned as they are) or an `EpisodeDataset` (its
    episodes read back, the final zero action of the `is_last` row dropped).
    """
    if hasattr(episodes, "episode") and hasattr(episodes, "num_episodes"):
        out = []
        for i in range(episodes.num_episodes):
            ep = episodes.episode(i)
            out.append(
                {
                    "image": np.asarray(ep["image"]),
                    "state": np.asarray(ep["state"], np.float32),
                    "action": np.asarray(ep["action"], np.float32)[:-1],
                    "reward": np.asarray(ep["reward"], np.float32)[:-1],
                    "success": np.asarray(ep["success"], bool)[:-1],
                    "subtask": list(ep["subtask"]),
                    "instruction": ep["instruction"][0],
                    "task_name": ep["task_name"][0],
                    "seed": int(ep["seed"][0]),
                    "noise_mode": ep["noise_mode"][0],
                    # the World Expert's full-state target (a refresh of one that models it needs it)
                    **({"full_state": np.asarray(ep["full_state"], np.float32)} if "full_state" in ep else {}),
                }
            )
        return out
    return list(episodes)


def start_observation(episodes: Sequence[dict[str, Any]]) -> Observation:
    """Observation [N] of the first frame of each episode."""
    return Observation.from_dicts(
        {
            "image": ep["image"][0],
            "state": ep["state"][0],
            "instruction": ep["instruction"],
            "task_name": ep["task_name"],
        }
        for ep in episodes
    )


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3] (area resampling; identity when already that size)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="area")
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------------------------- fidelity
@torch.no_grad()
def world_fidelity(
    world: Any,
    episodes: Any,
    num_chunks: int = 4,
    chunk_size: int | None = None,
    change_threshold: float = 8.0,
    max_episodes: int | None = None,
    return_frames: int = 0,
) -> dict[str, Any]:
    """Open-loop World-Expert error along real trajectories, per chunk k = 1..K.

    From the real first frame (encoded) and state, the world model imagines K chunks with the recorded real
    actions, feeding its own predictions back (open loop). Chunk k is compared with the real frame and state at
    t = kH; an episode counts for chunk k when it lasted at least kH steps.

    Args:
        world: a model with `encode_images`, `imagine`, `next_observation` (the WLA policy or its snapshot).
        episodes: real episodes (`as_episode_list` input).
        num_chunks: K chunks to replay.
        chunk_size: H (default `world.config.chunk_size`).
        change_threshold: a pixel is "changed" when it differs from the first frame by more than this (uint8).
        max_episodes: replay at most this many episodes (the first ones).
        return_frames: also return "frames": real and predicted uint8 [K+1, H, W, 3] of the first R episodes.

    Returns:
        {"world_psnr": [K], "copy_psnr": [K], "world_psnr_changed": [K], "copy_psnr_changed": [K],
        "world_latent_mse": [K], "world_state_mse": [K], "count": [K]} (NaN where no episode reached chunk k),
        and "frames" when asked.
    """
    eps = [ep for ep in as_episode_list(episodes) if len(ep["action"]) > 0]
    if max_episodes is not None:
        eps = eps[:max_episodes]
    H = int(chunk_size or world.config.chunk_size)
    K = int(num_chunks)
    keys = (
        "world_psnr",
        "copy_psnr",
        "world_psnr_changed",
        "copy_psnr_changed",
        "world_latent_mse",
        "world_state_mse",
    )
    out: dict[str, Any] = {k: [float("nan")] * K for k in keys}
    out["count"] = [0] * K
    if not eps:
        return out
    size = int(getattr(getattr(world, "config", None), "image_size", np.asarray(eps[0]["image"]).shape[1]))
    N = len(eps)
    lengths = np.array([len(ep["action"]) for ep in eps])  # [N] steps T_i
    # Chunk k of episode i is its k-th H-step window, by the windowing rule of SFT (`window_rows`, stride H): action
    # rows [N, K, H] (padded by repeating the last action), target frame rows [N, K] (kH clamped to the episode's
    # end), and whether the whole chunk was executed [N, K]. Past an episode's windows it holds still at its end.
    act_rows = np.zeros((N, K, H), np.int64)
    next_rows = np.zeros((N, K), np.int64)
    executed = np.zeros((N, K), bool)
    for i, T_i in enumerate(lengths):
        w = window_rows(0, int(T_i) + 1, H, stride=H)  # the episode's rows: T_i + 1 observations
        n = min(K, len(w["t"]))
        act_rows[i, :n], next_rows[i, :n], executed[i, :n] = w["actions"][:n], w["next"][:n], w["valid"][:n].all(1)
        act_rows[i, n:], next_rows[i, n:] = T_i - 1, T_i
    obs = start_observation(eps)
    first = _resize_uint8(obs.images.numpy(), size)  # [N, s, s, 3] the last observed real frame
    obs.latents = world.encode_images(obs.images)
    frames_real = [first[:return_frames]]
    frames_pred = [first[:return_frames]]
    for k in range(1, K + 1):
        valid = executed[:, k - 1]  # [N] episodes that executed the whole chunk k
        actions = np.stack([np.asarray(ep["action"], np.float32)[act_rows[i, k - 1]] for i, ep in enumerate(eps)])
        pred = world.imagine(obs, torch.from_numpy(actions).to(obs.states.device), decode=True)  # actions [N, H, A]
        obs = world.next_observation(obs, pred)
        real_idx = next_rows[:, k - 1]  # [N] frame index kH (clamped for invalid rows)
        real = _resize_uint8(np.stack([np.asarray(ep["image"][j]) for ep, j in zip(eps, real_idx)]), size)
        real_state = np.stack([np.asarray(ep["state"][j], np.float32) for ep, j in zip(eps, real_idx)])  # [N, S]
        pred_img = pred.images.cpu().numpy()  # [N, s, s, 3]
        if return_frames:
            frames_real.append(real[:return_frames])
            frames_pred.append(pred_img[:return_frames])
        if not valid.any():
            continue
        v = valid
        changed = changed_pixel_mask(first[v], real[v], change_threshold)  # [n, s, s]
        target_latents = world.encode_images(torch.from_numpy(real[v]))
        out["world_psnr"][k - 1] = nanmean(psnr(pred_img[v], real[v]))
        out["copy_psnr"][k - 1] = nanmean(psnr(first[v], real[v]))
        out["world_psnr_changed"][k - 1] = nanmean(psnr(pred_img[v], real[v], mask=changed))
        out["copy_psnr_changed"][k - 1] = nanmean(psnr(first[v], real[v], mask=changed))
        vt = torch.from_numpy(v).to(pred.latents.device)
        out["world_latent_mse"][k - 1] = F.mse_loss(pred.latents[vt].float(), target_latents.float()).item()
        out["world_state_mse"][k - 1] = float(((pred.states[vt].float().cpu().numpy() - real_state[v]) ** 2).mean())
        out["count"][k - 1] = int(v.sum())
    if return_frames:
        out["frames"] = {
            "real": np.stack(frames_real, axis=1),  # [R, K+1, s, s, 3]
            "pred": np.stack(frames_pred, axis=1),  # [R, K+1, s, s, 3]
        }
    return out


def fidelity_metrics(fid: dict[str, Any], prefix: str = "verify") -> dict[str, float]:
    """Flat keys ``{prefix}/world_psnr_chunk{k}``, ``copy_psnr_chunk{k}``, ``world_latent_mse_chunk{k}``, … (k from 1)
    plus chunk means ``{prefix}/world_psnr``, ``{prefix}/copy_psnr``, ``{prefix}/world_psnr_changed``, ….
    """
    m: dict[str, float] = {}
    for key in (
        "world_psnr",
        "copy_psnr",
        "world_psnr_changed",
        "copy_psnr_changed",
        "world_latent_mse",
        "world_state_mse",
    ):
        for k, value in enumerate(fid[key], start=1):
            m[f"{prefix}/{key}_chunk{k}"] = float(value)
        m[f"{prefix}/{key}"] = nanmean(fid[key])
    return m


# ----------------------------------------------------------------------------------------------- paired run
def real_frame_success(
    success_scorer: SuccessScorer, episodes: Sequence[dict[str, Any]], chunk_size: int, threshold: float = 0.5
) -> np.ndarray:
    """Reward-model verdict on REAL episodes: success when some frame at a chunk boundary (t = H, 2H, …, and the
    final frame) scores ≥ `threshold`. Returns bool [N]."""
    verdicts = []
    for ep in episodes:
        images = np.asarray(ep["image"])  # [T+1, H, W, 3]
        idx = sorted(set(range(chunk_size, len(images), chunk_size)) | {len(images) - 1})
        probs = success_scorer(torch.from_numpy(images[idx]), [str(ep["task_name"])] * len(idx))
        verdicts.append(bool((torch.as_tensor(probs).float() >= threshold).any()))
    return np.array(verdicts, dtype=bool)


def paired_verification(
    policy: PolicyLike,
    imagine_fn: ImagineFn,
    tasks: Sequence[str],
    episodes_per_task: int,
    seed: int | Sequence[int] = 0,
    world: Any | None = None,
    success_scorer: SuccessScorer | None = None,
    scorer_threshold: float = 0.5,
    num_chunks: int = 4,
    num_videos: int = 2,
    prefix: str = "verify",
    **rollout_kwargs: Any,
) -> dict[str, Any]:
    """Run the same seeded starts really and in imagination; compare.

    Real episodes should get the same step budget as imagination (T chunks × H actions): pass
    ``max_episode_steps=T*H`` in `rollout_kwargs` so that both sides have the same time to succeed.

    Args:
        policy: the policy under test (acts deterministically in the real simulator).
        imagine_fn: ``imagine_fn(policy, start_obs [N], seeds) -> Trajectories`` (success bool [N]).
        tasks, episodes_per_task, seed: the real episodes (seed = base seed + episode index).
        world: the simulator's world model, for open-loop fidelity along the real trajectories (None: skip).
        success_scorer: success reward model on real frames, for ``verify/reward_precision|recall`` (None: skip).
        scorer_threshold: probability above which the reward model says success.
        num_chunks: K chunks of open-loop fidelity.
        num_videos: side-by-side videos (real | imagined-by-policy, and real | world replay).
        prefix: metric namespace.
        **rollout_kwargs: forwarded to `rollout_policy` (num_workers, max_episode_steps, timeout_s, env_fn, …).

    Returns:
        float metrics, plus "videos" (name → uint8 [T, H, W', 3]), "real" (`RealRolloutResult`), and
        "imagined_success" / "real_success" (bool [N] paired rows).
    """
    real: RealRolloutResult = rollout_policy(
        policy, tasks, episodes_per_task, seeds=seed, record_video=0, keep_episodes=True, **rollout_kwargs
    )
    eps = real.episodes
    m: dict[str, Any] = {
        f"{prefix}/episodes": float(len(eps)),
        f"{prefix}/lost_episodes": float(len(real.lost)),
        f"{prefix}/timed_out": float(real.timed_out),
    }
    if not eps:
        logger.warning("paired verification: no real episode finished (lost %d)", len(real.lost))
        return {**m, f"{prefix}/imagination_gap": float("nan"), "videos": {}, "real": real}
    real_success = np.array([ep["episode_success"] for ep in eps], dtype=bool)  # [N]
    seeds = [int(ep["seed"]) for ep in eps]
    start = start_observation(eps)

    # --- imagination from the same starts
    traj = imagine_fn(policy, start, seeds)
    imagined = torch.as_tensor(traj.success).bool().cpu().numpy().reshape(-1)
    if imagined.shape[0] != len(eps):
        raise ValueError(f"imagine_fn: expected success for {len(eps)} rows (one per start), got {imagined.shape[0]}")

    # --- confusion of imagined vs real success
    conf = binary_confusion(imagined, real_success)
    pr = precision_recall(conf)
    m.update({f"{prefix}/{k}": float(v) for k, v in conf.items()})
    m[f"{prefix}/agreement"] = pr["agreement"]
    m[f"{prefix}/imagined_precision"] = pr["precision"]  # P(real success | imagined success)
    m[f"{prefix}/imagined_recall"] = pr["recall"]  # P(imagined success | real success)
    m[f"{prefix}/imagined_success"] = float(imagined.mean())
    m[f"{prefix}/real_success"] = float(real_success.mean())
    m[f"{prefix}/imagination_gap"] = float(imagined.mean() - real_success.mean())
    for task in dict.fromkeys(ep["task_name"] for ep in eps):
        rows = np.array([ep["task_name"] == task for ep in eps])
        m[f"{prefix}/{task}/imagination_gap"] = float(imagined[rows].mean() - real_success[rows].mean())

    # --- the success reward model on REAL frames vs real outcomes
    chunk = real.chunk_size or int(getattr(getattr(world, "config", None), "chunk_size", 1))
    if success_scorer is not None:
        verdict = real_frame_success(success_scorer, eps, chunk, scorer_threshold)
        rpr = precision_recall(binary_confusion(verdict, real_success))
        m[f"{prefix}/reward_precision"] = rpr["precision"]
        m[f"{prefix}/reward_recall"] = rpr["recall"]
        m[f"{prefix}/reward_agreement"] = rpr["agreement"]

    # --- World Expert open-loop along the real trajectories
    videos: dict[str, np.ndarray] = {}
    if world is not None:
        fid = world_fidelity(world, eps, num_chunks=num_chunks, chunk_size=chunk, return_frames=num_videos)
        m.update(fidelity_metrics(fid, prefix))
        for i in range(min(num_videos, len(eps))):
            videos[f"replay_{eps[i]['task_name']}_seed{seeds[i]}"] = side_by_side(
                fid["frames"]["real"][i], fid["frames"]["pred"][i]
            )

    # --- real | imagined-by-policy videos (frames at chunk boundaries)
    sub = getattr(traj, "subgoal_images", None)
    if sub is not None:
        sub = torch.as_tensor(sub).cpu().numpy()  # [N, T, h, w, 3]
        for i in range(min(num_videos, len(eps))):
            real_frames = np.asarray(eps[i]["image"])[::chunk]  # [~T, H, W, 3]
            imag = np.concatenate([_resize_uint8(np.asarray(eps[i]["image"][:1]), sub.shape[2]), sub[i]])  # [T+1, ...]
            real_frames = _resize_uint8(real_frames, sub.shape[2])
            tag = f"{'S' if real_success[i] else 'F'}{'S' if imagined[i] else 'F'}"  # real/imagined outcome
            videos[f"policy_{eps[i]['task_name']}_seed{seeds[i]}_{tag}"] = side_by_side(real_frames, imag)
    return {**m, "videos": videos, "real": real, "imagined_success": imagined, "real_success": real_success}


def make_imagine_fn(engine: Any, horizon: int | None = None, sample: bool = False) -> ImagineFn:
    """``imagine_fn`` over an `ImaginationEngine`: one imagined episode per start (G = 1), greedy by default."""

    def imagine_fn(policy: PolicyLike, start_obs: Observation, seeds: list[int]) -> Any:
        return engine.rollout(policy, start_obs, group_size=1, horizon=horizon, sample=sample)

    return imagine_fn


# ----------------------------------------------------------------------------------------------- the verifier
class Verifier:
    """Paired verification as a callable for `VerifyCallback`; keeps the real episodes in `buffer` for refreshes.

    Args:
        imagine_fn: see `paired_verification`.
        tasks: real-simulator tasks.
        episodes: paired episodes per verification, spread over the tasks (at least one per task).
        seed: base seed; with `seed_stride` 0 every verification uses the same starts (comparable over
            training), else verification i uses ``seed + i * seed_stride`` (fresh starts, better for refreshes).
        world: the simulator's world model (for open-loop fidelity and refreshes).
        success_scorer, scorer_threshold: the reward model checked on real frames.
        max_buffer: most real episodes kept for refreshes (oldest dropped).
        **kwargs: forwarded to `paired_verification` (num_chunks, num_videos, num_workers, max_episode_steps, …).
    """

    def __init__(
        self,
        imagine_fn: ImagineFn,
        tasks: Sequence[str],
        episodes: int,
        seed: int = 10_000,
        seed_stride: int = 0,
        world: Any | None = None,
        success_scorer: SuccessScorer | None = None,
        scorer_threshold: float = 0.5,
        max_buffer: int = 512,
        **kwargs: Any,
    ):
        self.imagine_fn = imagine_fn
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("Verifier: expected at least one task")
        self.episodes_per_task = max(1, math.ceil(episodes / len(self.tasks)))
        self.seed, self.seed_stride = int(seed), int(seed_stride)
        self.world = world
        self.success_scorer = success_scorer
        self.scorer_threshold = scorer_threshold
        self.max_buffer = max_buffer
        self.kwargs = kwargs
        self.buffer: list[dict[str, Any]] = []
        self.calls = 0

    def seeds(self) -> list[int]:
        """Reset seeds of the next verification."""
        return episode_seeds(self.episodes_per_task, self.seed + self.calls * self.seed_stride)

    def __call__(self, policy: PolicyLike, step: int) -> dict[str, Any]:
        out = paired_verification(
            policy,
            self.imagine_fn,
            self.tasks,
            self.episodes_per_task,
            seed=self.seeds(),
            world=self.world,
            success_scorer=self.success_scorer,
            scorer_threshold=self.scorer_threshold,
            **self.kwargs,
        )
        self.calls += 1
        self.buffer.extend(out["real"].episodes)
        self.buffer = self.buffer[-self.max_buffer :]
        real = out["real"]
        kept = {k: v for k, v in out.items() if k not in ("real", "imagined_success", "real_success")}
        # the real interaction this verification cost (counted in the run's budget by the callback)
        return {**kept, "real_episodes": real.episodes_started, "real_env_steps": real.env_steps}
