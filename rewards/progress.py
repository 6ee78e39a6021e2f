"""SRPO-style self-referential progress reward (Fei et al., "SRPO: Self-Referential Policy Optimization").

Successful rollouts get 1. A failed rollout gets partial credit from how close its final world latent came to the
final latents of the *successful rollouts of its own group* (the policy's own successes are the reference, no
demonstrations needed):

    d_n     = min_{s ∈ successes} ||z_n - z_s||          (z = flattened latent after the last chunk run)
    d0_n    = min_{s ∈ successes} ||z0_n - z_s||         (z0 = latent of the start observation)
    r_n     = failure_scale · clip(1 - d_n / d0_n, 0, 1)

so a failure that ends where it started scores 0 and one that ends on a success scores `failure_scale` (< 1, so a
success always beats a failure). Without start latents, d0 is the largest d among the group's failures. When a
group has no success, successes of the same task elsewhere in the batch are the reference; with none, failures
score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.base import last_alive_index, reward_factory


class ProgressReward:
    """Self-referential progress credit for failures; 1 for successes.

    Args:
        failure_scale: the most credit a failure can get (must be in [0, 1)).
        success_key: where success comes from: "success" (Trajectories.success) or "success_logits" (logit > 0 after
            the last chunk run).
    """

    __name__ = "progress"

    def __init__(self, failure_scale: float = 0.5, success_key: str = "success") -> None:
        if not 0.0 <= failure_scale < 1.0:
            raise ValueError(
                f"progress: failure_scale must be in [0, 1) so successes outrank failures, got {failure_scale}"
            )
        if success_key not in ("success", "success_logits"):
            raise ValueError(f"progress: success_key must be 'success' or 'success_logits', got {success_key!r}")
        self.failure_scale = float(failure_scale)
        self.success_key = success_key

    def __call__(
        self,
        *,
        subgoal_latents: torch.Tensor,
        alive: torch.Tensor,
        group_size: int,
        task_names: Sequence[str],
        success: torch.Tensor | None = None,
        success_logits: torch.Tensor | None = None,
        start_latents: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Args: subgoal_latents [N, T, C, h, w]; alive bool [N, T]; success bool [N]; start_latents [N, C, h, w]."""
        latents = torch.as_tensor(subgoal_latents).float()
        n = latents.shape[0]
        if n % group_size != 0:
            raise ValueError(f"progress: N={n} rows is not a multiple of group_size={group_size}")
        last = last_alive_index(torch.as_tensor(alive)).to(latents.device)
        z = latents[torch.arange(n, device=latents.device), last].reshape(n, -1)  # [N, C*h*w]
        if self.success_key == "success" and success is not None:
            ok = torch.as_tensor(success).bool().cpu()
        elif success_logits is not None:
            logits = torch.as_tensor(success_logits).float()
            ok = (logits.gather(1, last[:, None].to(logits.device))[:, 0] > 0).cpu()
        else:
            raise ValueError("progress: needs `success` [N] or `success_logits` [N, T]")
        z0 = None if start_latents is None else torch.as_tensor(start_latents).float().reshape(n, -1).to(z.device)
        rewards = torch.where(ok, 1.0, 0.0)
        for g0 in range(0, n, group_size):
            rows = torch.arange(g0, g0 + group_size)
            fail = rows[~ok[rows]]
            if len(fail) == 0:
                continue
            refs = rows[ok[rows]]
            if len(refs) == 0:  # borrow successes of the same task from other groups
                task = task_names[g0]
                refs = torch.tensor([i for i in range(n) if ok[i] and task_names[i] == task], dtype=torch.long)
            if len(refs) == 0:
                continue
            d = torch.cdist(z[fail], z[refs]).amin(dim=1)  # [F]
            if z0 is not None:
                d0 = torch.cdist(z0[fail], z[refs]).amin(dim=1)
            else:
                d0 = d.max().expand_as(d)
            progress = (1.0 - d / d0.clamp(min=1e-8)).clamp(0.0, 1.0)
            rewards[fail] = self.failure_scale * progress.cpu()
        return rewards.tolist()


@reward_factory
def build_progress_reward(failure_scale: float = 0.5, success_key: str = "success", **unused: Any) -> ProgressReward:
    """The `progress` built-in (context options `failure_scale`, `success_key`)."""
    return ProgressReward(failure_scale, success_key)
