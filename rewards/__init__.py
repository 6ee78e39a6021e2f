"""wlarl rewards: reward functions and reward models scored on (predicted) trajectories.

See `rewards.base` for the contract and docs/rewards.md for writing your own.
"""

from rewards.base import (
    BUILTIN_REWARDS,
    REWARD_KWARGS,
    SUBTASK_JOIN,
    RewardFunctionError,
    RewardLoadError,
    RewardScorer,
    build_reward_funcs,
    build_reward_scorer,
    check_reward_signature,
    predicted_success,
    resolve_reward_func,
    reward_factory,
    text_format,
    trajectory_reward_kwargs,
    trajectory_success,
    validate_rewards,
)

__all__ = [
    "BUILTIN_REWARDS",
    "REWARD_KWARGS",
    "SUBTASK_JOIN",
    "RewardFunctionError",
    "RewardLoadError",
    "RewardScorer",
    "build_reward_funcs",
    "build_reward_scorer",
    "check_reward_signature",
    "predicted_success",
    "resolve_reward_func",
    "reward_factory",
    "text_format",
    "trajectory_reward_kwargs",
    "trajectory_success",
    "validate_rewards",
]
