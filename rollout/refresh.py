"""Refreshing the simulator: fine-tune the frozen snapshot's World Expert on real episodes.

- `refresh_world_model(snapshot, episodes, steps, …)`: a few gradient steps on the World-Expert SFT terms
  (`WLAPolicy.world_loss`: latent, state and success terms weighted as in SFT), one chunk ahead or, with
  `open_loop_chunks` K > 1, over K chunks with the World Expert's own predictions fed back
  (`WLAPolicy.open_loop_world_losses`); open-loop fidelity before and after.
- `refresh_metrics(result)`: flat ``verify/refresh_*`` metrics.
- `WorldRefresh(world, verifier, steps, lr)`: the callable a `RefreshWorldCallback` runs; it trains on the real
  episodes the `Verifier` has gathered so far.

A refresh moves the simulator only: the KL / anchor reference is a separate frozen copy (the recipe builds one
whenever `refresh_world_steps` > 0).
"""

from __future__ import annotations

import numbers
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rollout.verify import Verifier, as_episode_list, world_fidelity
from wlarl.utils.stats import nanmean


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
    open_loop_chunks: int = 1,
    open_loop_reencode: bool = False,
) -> dict[str, Any]:
    """Fine-tune the World Expert of the simulator snapshot on real episodes (world losses only).

    The loss is `policy_snapshot.world_loss(open_loop_world_losses(batch, K))`: the latent, state and success terms
    with the weights of SFT, averaged over K chunks rolled out open loop from the real observation with the real
    actions (K = 1: the World-Expert part of `sft_losses`, one chunk ahead). Windows are those of
    `wlarl.data.SFTWindows(chunks=K)`: one per observation with an action, so a window near an episode's end keeps
    the chunks that fit (the others leave the loss), and an episode shorter than K chunks still trains on the chunks it
    has; the result counts them. The image tokenizer stays fixed (the live policy reads the snapshot's latents, so they
    must keep their meaning); everything else the world loss reaches is trained. The snapshot is re-frozen afterwards.

    Args:
        policy_snapshot: the frozen WLA copy behind the imagination engine (modified in place).
        episodes: real episodes (`rollout.verify.as_episode_list` input), e.g. those gathered by verification.
        steps: optimizer steps.
        lr: AdamW learning rate.
        batch_size: SFT windows per step.
        num_chunks: chunks of the open-loop fidelity measured before and after.
        eval_episodes: episodes to measure fidelity on (default: `episodes`, i.e. in-sample).
        reward_refresh_fn: optional ``fn(episodes) -> dict`` that refreshes the success reward model too.
        seed: sampling seed of the windows.
        max_grad_norm: gradient clipping.
        open_loop_chunks: K, chunks per training window rolled out open loop (1: one chunk ahead from real inputs).
        open_loop_reencode: feed predictions back through decoded uint8 frames, as an `ImaginationEngine` with
            `reencode=True` does (pass the engine's setting); default the raw latents, as `world_fidelity` does.

    Returns:
        {"before": fidelity, "after": fidelity, "loss_first", "loss_last", "steps", "windows", "reward": dict,
        "open_loop_chunks": K, "windows_all_chunks": windows whose K chunks all lie in their episode,
        "episodes_short": episodes shorter than K chunks (trained on the chunks they have)}.
    """
    from wlarl.data import SFTWindows, collate_windows, load_episodes, write_episodes

    eps = [ep for ep in as_episode_list(episodes) if len(ep["action"]) > 0]
    if not eps:
        raise ValueError("refresh_world_model: no real episode with at least one step to train on")
    if steps < 1:
        raise ValueError(f"refresh_world_model: steps must be >= 1, got {steps}")
    if (
        isinstance(open_loop_chunks, bool)
        or not isinstance(open_loop_chunks, numbers.Integral)
        or open_loop_chunks < 1
    ):
        raise ValueError(f"refresh_world_model: open_loop_chunks must be an integer >= 1, got {open_loop_chunks!r}")
    K = int(open_loop_chunks)
    eval_eps = as_episode_list(eval_episodes) if eval_episodes is not None else eps
    H = int(policy_snapshot.config.chunk_size)
    before = world_fidelity(policy_snapshot, eval_eps, num_chunks=num_chunks, chunk_size=H)

    with tempfile.TemporaryDirectory(prefix="wlarl-refresh-") as tmp:
        write_episodes(eps, Path(tmp) / "episodes", {"source": "refresh_world_model"})
        windows = SFTWindows(load_episodes(Path(tmp) / "episodes"), horizon=H, chunks=K)
        gen = torch.Generator().manual_seed(seed)
        frozen = {id(p) for p in policy_snapshot.image_tokenizer.parameters()}
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
                    terms = policy_snapshot.open_loop_world_losses(batch, chunks=K, reencode=open_loop_reencode)
                    loss = policy_snapshot.world_loss(terms)
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
        n_windows, n_all_chunks = len(windows), windows.full_chunk_windows
    # an episode of T steps has ceil(T / H) chunks from its first observation
    n_short = sum(1 for ep in eps if -(-len(ep["action"]) // H) < K)

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
        "open_loop_chunks": K,
        "windows_all_chunks": n_all_chunks,
        "episodes_short": n_short,
    }


def refresh_metrics(res: dict[str, Any], prefix: str = "verify") -> dict[str, float]:
    """Flat ``{prefix}/refresh_*`` metrics of a `refresh_world_model` result."""
    m = {
        f"{prefix}/refresh_loss_first": res["loss_first"],
        f"{prefix}/refresh_loss_last": res["loss_last"],
        f"{prefix}/refresh_windows": float(res["windows"]),
    }
    if res.get("open_loop_chunks", 1) > 1:
        m[f"{prefix}/refresh_open_loop_chunks"] = float(res["open_loop_chunks"])
        m[f"{prefix}/refresh_windows_all_chunks"] = float(res["windows_all_chunks"])
        m[f"{prefix}/refresh_episodes_short"] = float(res["episodes_short"])
    for when in ("before", "after"):
        for key in ("world_psnr", "world_psnr_changed", "world_latent_mse", "world_state_mse"):
            m[f"{prefix}/refresh_{key}_{when}"] = nanmean(res[when][key])
    m.update({f"{prefix}/refresh_reward_{k}": float(v) for k, v in res.get("reward", {}).items()})
    return m


class WorldRefresh:
    """``refresh(policy, step) -> dict`` for `RefreshWorldCallback`: fine-tune `world` on the verifier's real episodes.

    Args:
        world: the simulator snapshot behind the imagination engine (trained in place).
        verifier: the `Verifier` whose `buffer` holds the real episodes gathered so far.
        steps: gradient steps per refresh.
        lr: learning rate.
        **kwargs: forwarded to `refresh_world_model` (batch_size, num_chunks, open_loop_chunks, …).
    """

    def __init__(self, world: torch.nn.Module, verifier: Verifier, steps: int, lr: float, **kwargs: Any):
        self.world, self.verifier, self.steps, self.lr, self.kwargs = world, verifier, int(steps), float(lr), kwargs

    def __call__(self, policy: Any, step: int) -> dict[str, float]:
        if not self.verifier.buffer:
            return {}  # nothing gathered yet (verification has not run)
        res = refresh_world_model(self.world, self.verifier.buffer, steps=self.steps, lr=self.lr, **self.kwargs)
        return refresh_metrics(res)


__all__ = ["WorldRefresh", "refresh_metrics", "refresh_world_model"]
