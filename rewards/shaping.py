"""Shaping reward: penalties for jerky action chunks and for actions outside the action bounds.

r_n = -(smoothness_weight · mean_k ||a_{k+1} - a_k||² + bound_weight · mean_k Σ_A relu(|a_k - clip(a_k)|)²)

over the actions of the chunks row n ran (alive), in execution order (chunk by chunk, H actions each).
A row whose actions are constant and inside the bounds gets 0; every penalty makes it negative.

The actions scored are the policy's greedy mean chunks (`action_means`) when the trainer hands them, else the
executed actions (`actions`, clipped to the bounds as the simulator does). On the sampled actions the penalty
would reward a policy for shrinking its std (less sampling noise, less jerk) and for pulling means that sit at ±1
inward (fewer draws outside the bounds): neither makes the executed behaviour better. On the means, two rows with
the same means score the same whatever their noise, and a mean at exactly ±1 pays no bound penalty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.base import reward_factory


class ShapingReward:
    """Action smoothness and bound penalties.

    Args:
        action_low: lower bound, a float or A floats (Meta-World: -1).
        action_high: upper bound, a float or A floats (Meta-World: +1).
        smoothness_weight: weight of the mean squared difference of consecutive actions.
        bound_weight: weight of the mean squared excess outside [low, high].
    """

    __name__ = "shaping"

    def __init__(
        self,
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
        smoothness_weight: float = 1.0,
        bound_weight: float = 1.0,
    ) -> None:
        self.low = torch.as_tensor(action_low, dtype=torch.float32)
        self.high = torch.as_tensor(action_high, dtype=torch.float32)
        if bool((self.low > self.high).any()):
            raise ValueError(f"shaping: action_low {action_low} must not exceed action_high {action_high}")
        self.smoothness_weight = float(smoothness_weight)
        self.bound_weight = float(bound_weight)

    def __call__(
        self,
        *,
        actions: torch.Tensor,
        action_means: torch.Tensor | None = None,
        alive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Args: actions float [N, T, H, A] executed; action_means float [N, T, H, A] greedy means or None;
        alive bool [N, T]. Returns N penalties (≤ 0) on `action_means` when given, else on `actions`."""
        actions = torch.as_tensor(actions if action_means is None else action_means).float()  # [N, T, H, A] scored
        if actions.ndim != 4:
            name = "actions" if action_means is None else "action_means"
            raise ValueError(f"shaping: expected {name} [N, T, H, A], got shape {tuple(actions.shape)}")
        n, t, h, a = actions.shape
        if alive is None:
            alive = torch.ones(n, t, dtype=torch.bool)
        mask = (
            torch.as_tensor(alive).bool().to(actions.device)[:, :, None].expand(n, t, h).reshape(n, t * h)
        )  # [N, T*H]
        flat = actions.reshape(n, t * h, a)  # [N, T*H, A]
        low, high = self.low.to(actions.device), self.high.to(actions.device)
        excess = (flat - torch.maximum(torch.minimum(flat, high), low)).pow(2).sum(-1)  # [N, T*H]
        bound = (excess * mask).sum(1) / mask.sum(1).clamp(min=1)
        # consecutive pairs both executed (alive chunks are a prefix, so this is the executed sequence)
        pair = mask[:, 1:] & mask[:, :-1]  # [N, T*H-1]
        jerk = (flat[:, 1:] - flat[:, :-1]).pow(2).sum(-1)  # [N, T*H-1]
        smooth = (jerk * pair).sum(1) / pair.sum(1).clamp(min=1)
        return (-(self.smoothness_weight * smooth + self.bound_weight * bound)).tolist()


@reward_factory
def build_shaping_reward(
    action_low: float | Sequence[float] = -1.0,
    action_high: float | Sequence[float] = 1.0,
    smoothness_weight: float = 1.0,
    bound_weight: float = 1.0,
    **unused: Any,
) -> ShapingReward:
    """The `shaping` built-in (options come from the reward context; others are ignored)."""
    return ShapingReward(action_low, action_high, smoothness_weight, bound_weight)
