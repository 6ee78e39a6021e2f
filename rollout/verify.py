"""Paired verification of imagination against the real simulator, World-Expert fidelity, and acting on it.

- `paired_verification`: the same seeded start states are run by the policy in the real simulator and in
  imagination. Logged: the confusion matrix of imagined vs real success (``verify/tp|fp|fn|tn``,
  ``verify/agreement``), ``verify/imagination_gap`` (imagined − real success rate), the success reward
  model's precision/recall on the REAL frames against real outcomes, and the World Expert's open-loop error
  along the real trajectories.
- `world_fidelity`: open-loop replay (DreamerV3's report): encode the real first frame, imagine with the
  recorded real action chunks, compare the prediction after chunk k with the real frame at t = kH: PSNR
  (full frame and changed pixels only), latent MSE and state MSE per chunk, next to the baseline that copies
  the last observed frame (the first frame: in open loop nothing later is observed).
- `refresh_world_model`: fine-tune the simulator snapshot's World Expert (world losses only) on real episodes.
- `Verifier`: the object a `VerifyCallback` calls; it buffers the real episodes it gathers for refreshes.
- `build_callbacks(cfg, engine, scorer, episodes)`: the evaluation/verification callbacks for `grpo_world`.

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

import atexit
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rollout.real import PolicyLike, RealRolloutResult, episode_seeds, rollout_policy
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
                }
            )
        return out
    return list(episodes)


def start_observation(episodes: Sequence[dict[str, Any]]) -> Observation:
    """Observation [N] of the first frame of each episode."""
    return Observation(
        images=torch.from_numpy(np.stack([np.asarray(ep["image"][0]) for ep in episodes])),  # [N, H, W, 3]
        states=torch.from_numpy(np.stack([np.asarray(ep["state"][0], np.float32) for ep in episodes])),  # [N, S]
        instructions=[str(ep["instruction"]) for ep in episodes],
        task_names=[str(ep["task_name"]) for ep in episodes],
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
    N, A = len(eps), np.asarray(eps[0]["action"]).shape[-1]
    lengths = np.array([len(ep["action"]) for ep in eps])  # [N] steps T_i
    obs = start_observation(eps)
    first = _resize_uint8(obs.images.numpy(), size)  # [N, s, s, 3] the last observed real frame
    obs.latents = world.encode_images(obs.images)
    frames_real = [first[:return_frames]]
    frames_pred = [first[:return_frames]]
    for k in range(1, K + 1):
        valid = lengths >= k * H  # [N] episodes that executed the whole chunk k
        actions = np.zeros((N, H, A), np.float32)
        for i, ep in enumerate(eps):
            chunk = np.asarray(ep["action"][(k - 1) * H : k * H], np.float32)
            if len(chunk):
                actions[i, : len(chunk)] = chunk
                actions[i, len(chunk) :] = chunk[-1]  # past the end: repeat (ignored, the row is not valid)
        pred = world.imagine(obs, torch.from_numpy(actions).to(obs.states.device), decode=True)
        obs = world.next_observation(obs, pred)
        real_idx = np.minimum(lengths, k * H)  # [N] frame index kH (clamped for invalid rows)
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


# ----------------------------------------------------------------------------------------------- refresh
def _world_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    if "loss/world" in out:
        return out["loss/world"]
    parts = [v for k, v in out.items() if k.startswith("loss/world")]
    if not parts:
        raise KeyError(f"refresh_world_model: sft_losses returned no 'loss/world*' term (keys {sorted(out)})")
    return sum(parts)


def refresh_world_model(
    policy_snapshot: torch.nn.Module,
    episodes: Any,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 16,
    num_chunks: int = 4,
    eval_episodes: Any | None = None,
    reward_refresh_fn: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None,
    seed: int = 0,
    max_grad_norm: float = 1.0,
) -> dict[str, Any]:
    """Fine-tune the World Expert of the simulator snapshot on real episodes (world losses only).

    Only ``loss/world`` of `sft_losses` (latent + state + success terms) is minimised; the image tokenizer stays
    fixed (the live policy reads the snapshot's latents, so they must keep their meaning). Everything else the
    world loss reaches is trained. The snapshot is re-frozen afterwards. It also serves as the KL reference, so a
    refresh moves that reference too.

    Args:
        policy_snapshot: the frozen WLA copy behind the imagination engine (modified in place).
        episodes: real episodes (`as_episode_list` input), e.g. those gathered by verification.
        steps: optimizer steps.
        lr: AdamW learning rate.
        batch_size: SFT windows per step.
        num_chunks: chunks of the open-loop fidelity measured before and after.
        eval_episodes: episodes to measure fidelity on (default: `episodes`, i.e. in-sample).
        reward_refresh_fn: optional ``fn(episodes) -> dict`` that refreshes the success reward model too.
        seed: sampling seed of the windows.
        max_grad_norm: gradient clipping.

    Returns:
        {"before": fidelity, "after": fidelity, "loss_first", "loss_last", "steps", "windows", "reward": dict}.
    """
    from wlarl.data import SFTWindows, collate_windows, load_episodes, write_episodes

    eps = [ep for ep in as_episode_list(episodes) if len(ep["action"]) > 0]
    if not eps:
        raise ValueError("refresh_world_model: no real episode with at least one step to train on")
    if steps < 1:
        raise ValueError(f"refresh_world_model: steps must be >= 1, got {steps}")
    eval_eps = as_episode_list(eval_episodes) if eval_episodes is not None else eps
    H = int(policy_snapshot.config.chunk_size)
    before = world_fidelity(policy_snapshot, eval_eps, num_chunks=num_chunks, chunk_size=H)

    with tempfile.TemporaryDirectory(prefix="wlarl-refresh-") as tmp:
        write_episodes(eps, Path(tmp) / "episodes", {"source": "refresh_world_model"})
        windows = SFTWindows(load_episodes(Path(tmp) / "episodes"), horizon=H)
        gen = torch.Generator().manual_seed(seed)
        frozen = {id(p) for p in getattr(policy_snapshot, "image_tokenizer", torch.nn.Module()).parameters()}
        params = [p for p in policy_snapshot.parameters() if id(p) not in frozen]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        policy_snapshot.train()
        losses = []
        try:
            with torch.enable_grad():  # callers may run under no_grad (e.g. a trainer callback)
                for _ in range(steps):
                    idx = torch.randint(len(windows), (min(batch_size, len(windows)),), generator=gen).tolist()
                    batch = collate_windows([windows[i] for i in idx])
                    loss = _world_loss(policy_snapshot.sft_losses(batch))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    opt.step()
                    losses.append(float(loss.detach()))
        finally:
            policy_snapshot.eval()
            for p in policy_snapshot.parameters():
                p.requires_grad_(False)
            opt.zero_grad(set_to_none=True)
        n_windows = len(windows)

    after = world_fidelity(policy_snapshot, eval_eps, num_chunks=num_chunks, chunk_size=H)
    reward = reward_refresh_fn(eps) if reward_refresh_fn is not None else {}
    return {
        "before": before,
        "after": after,
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "steps": steps,
        "windows": n_windows,
        "reward": reward,
    }


def refresh_metrics(res: dict[str, Any], prefix: str = "verify") -> dict[str, float]:
    """Flat ``{prefix}/refresh_*`` metrics of a `refresh_world_model` result."""
    m = {
        f"{prefix}/refresh_loss_first": res["loss_first"],
        f"{prefix}/refresh_loss_last": res["loss_last"],
        f"{prefix}/refresh_windows": float(res["windows"]),
    }
    for when in ("before", "after"):
        for key in ("world_psnr", "world_psnr_changed", "world_latent_mse", "world_state_mse"):
            m[f"{prefix}/refresh_{key}_{when}"] = nanmean(res[when][key])
    m.update({f"{prefix}/refresh_reward_{k}": float(v) for k, v in res.get("reward", {}).items()})
    return m


# ----------------------------------------------------------------------------------------------- the verifier
class Verifier:
    """Paired verification as a callable for `VerifyCallback`; keeps the real episodes for `refresh`.

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
        return {k: v for k, v in out.items() if k not in ("real", "imagined_success", "real_success")}

    def refresh(
        self, snapshot: torch.nn.Module | None = None, steps: int = 50, lr: float = 1e-4, **kwargs: Any
    ) -> dict[str, float]:
        """Fine-tune `snapshot` (default: `world`) on the buffered real episodes; returns ``verify/refresh_*`` metrics."""
        snapshot = snapshot if snapshot is not None else self.world
        if snapshot is None or not self.buffer:
            return {}
        res = refresh_world_model(snapshot, self.buffer, steps=steps, lr=lr, **kwargs)
        return refresh_metrics(res)


# ----------------------------------------------------------------------------------------------- wiring
def _find_success_scorer(scorer: Any) -> tuple[SuccessScorer | None, float]:
    """The success classifier inside a reward scorer (a function with `.model.predict_proba`), if any."""
    for fn in getattr(scorer, "funcs", []) or []:
        model = getattr(fn, "model", None)
        if model is not None and hasattr(model, "predict_proba"):
            threshold = getattr(fn, "threshold", 0.5)
            return model.predict_proba, float(threshold() if callable(threshold) else threshold)
    return None, 0.5


def _period(value: float | int | None, max_steps: int) -> int:
    """Steps between runs: an int, or a float in (0, 1) read as a ratio of max_steps (TrainingArguments style)."""
    if not value:
        return 0
    if 0 < value < 1:
        return max(1, math.ceil(value * max_steps))
    return int(value)


def build_callbacks(cfg: Any, engine: Any, scorer: Any = None, episodes: Any = None) -> list[Any]:
    """The real-evaluation, verification, refresh and keep-best callbacks configured by a `GRPOWorldConfig`.

    Args:
        cfg: `GRPOWorldConfig` (eval_steps, eval_episodes_per_task, num_env_workers, image_size, tasks, horizon,
            verify_steps, verify_episodes, refresh_world_steps, mask_unverified, mask_gap_threshold,
            keep_best_real, keep_best_margin, output_dir, max_steps, seed).
        engine: the `ImaginationEngine`; its `.world` is the simulator snapshot.
        scorer: the reward scorer; a success classifier inside it is checked against real outcomes.
        episodes: the training `EpisodeDataset` (task names when `cfg.tasks` is empty).

    Returns:
        Callbacks in the order they should run at a step: eval, verify, refresh, keep-best.
    """
    from rollout.real import EnvWorkerPool, make_real_evaluator
    from wlarl.trainer.callbacks import KeepBestRealCallback, RealEvalCallback, RefreshWorldCallback, VerifyCallback

    tasks = list(getattr(cfg, "tasks", None) or [])
    if not tasks and episodes is not None:
        tasks = sorted(set(episodes.dataset["task_name"])) if hasattr(episodes, "dataset") else []
    if not tasks:
        raise ValueError("build_callbacks: no tasks to evaluate: set --tasks (e.g. reach-v3)")
    max_steps = int(getattr(cfg, "max_steps", 0) or 0)
    world = engine.world
    chunk = int(world.config.chunk_size)
    env_kwargs = {"image_size": int(getattr(cfg, "image_size", 64))}
    camera = (getattr(episodes, "meta", None) or {}).get("camera")
    if camera:
        env_kwargs["camera"] = camera  # evaluate with the camera the policy was trained on
    num_workers = int(getattr(cfg, "num_env_workers", 1))
    common: dict[str, Any] = {"num_workers": num_workers, "env_kwargs": env_kwargs}
    if num_workers > 0:
        # One set of simulator processes serves every evaluation and verification of the run (started on first use).
        pool = EnvWorkerPool(num_workers, env_kwargs=env_kwargs)
        atexit.register(pool.close)
        common["pool"] = pool
    eval_steps = _period(getattr(cfg, "eval_steps", 0), max_steps)
    verify_steps = _period(getattr(cfg, "verify_steps", 0), max_steps)
    refresh_steps = _period(getattr(cfg, "refresh_world_steps", 0), max_steps)
    callbacks: list[Any] = []
    if eval_steps:
        evaluator = make_real_evaluator(
            tasks, int(cfg.eval_episodes_per_task), seed=int(getattr(cfg, "seed", 0)), num_videos=1,
            max_episode_steps=getattr(cfg, "eval_max_episode_steps", None),  # None: the simulator's limit
            timeout_s=float(getattr(cfg, "eval_timeout_s", 1800.0)), **common,
        )  # fmt: skip
        callbacks.append(RealEvalCallback(evaluator, eval_steps, output_dir=cfg.output_dir))
    verifier = None
    if verify_steps:
        success_scorer, threshold = _find_success_scorer(scorer)
        verifier = Verifier(
            make_imagine_fn(engine, horizon=int(cfg.horizon)), tasks, int(cfg.verify_episodes),
            seed=10_000 + int(getattr(cfg, "seed", 0)), seed_stride=1000 if refresh_steps else 0, world=world,
            success_scorer=success_scorer, scorer_threshold=threshold,
            max_episode_steps=int(cfg.horizon) * chunk,  # the same step budget as an imagined episode
            timeout_s=float(getattr(cfg, "eval_timeout_s", 1800.0)), **common,
        )  # fmt: skip
        callbacks.append(
            VerifyCallback(
                verifier,
                verify_steps,
                output_dir=cfg.output_dir,
                mask_unverified=bool(cfg.mask_unverified),
                mask_gap_threshold=float(cfg.mask_gap_threshold),
            )  # fmt: skip
        )
    if refresh_steps:
        if verifier is None:
            raise ValueError("refresh_world_steps needs verification to gather real episodes: set verify_steps > 0")
        grad_steps = int(getattr(cfg, "refresh_grad_steps", 50))
        lr = float(getattr(cfg, "refresh_lr", 1e-4))
        callbacks.append(
            RefreshWorldCallback(lambda policy, step: verifier.refresh(world, grad_steps, lr), refresh_steps)
        )
    if getattr(cfg, "keep_best_real", False) and eval_steps:
        callbacks.append(
            KeepBestRealCallback(margin=float(cfg.keep_best_margin), output_dir=cfg.output_dir, save_best=True)
        )
    return callbacks
