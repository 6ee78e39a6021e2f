"""The state reward model behind the `state_success`, `state_progress` and `state_value` rewards, one module per job.

- `model`: `StateRewardConfig`, `StateRewardModel` (full state + task → success logit, progress, value),
  `save_state_reward`, `load_state_reward`.
- `data`: labelled full states from episode datasets (`StateRows`), value targets, splits by episode.
- `training`: training, calibration (Platt scaling, threshold) and held-out evaluation, `train_state_reward`.
- `reward`: the rewards (`StateReward`) and their factories, registered in `rewards.base.BUILTIN_REWARDS`.
"""

from rewards.state_reward.data import (
    StateRows,
    split_by_episode,
    state_rows,
    state_rows_from_datasets,
    steps_to_success,
    value_targets,
)
from rewards.state_reward.model import (
    StateRewardConfig,
    StateRewardModel,
    load_state_reward,
    save_state_reward,
    state_features,
)
from rewards.state_reward.reward import (
    StateReward,
    build_state_progress_reward,
    build_state_success_reward,
    build_state_value_reward,
)
from rewards.state_reward.training import (
    calibrate_state_reward,
    evaluate_state_reward,
    fit_state_reward,
    progress_targets,
    train_state_reward,
)

__all__ = [
    "StateReward",
    "StateRewardConfig",
    "StateRewardModel",
    "StateRows",
    "build_state_progress_reward",
    "build_state_success_reward",
    "build_state_value_reward",
    "calibrate_state_reward",
    "evaluate_state_reward",
    "fit_state_reward",
    "load_state_reward",
    "progress_targets",
    "save_state_reward",
    "split_by_episode",
    "state_features",
    "state_rows",
    "state_rows_from_datasets",
    "steps_to_success",
    "train_state_reward",
    "value_targets",
]
