"""The dynamics ensemble behind the `dynamics_disagreement` reward (a MOPO-style uncertainty penalty), one module
per job.

- `model`: `DynamicsEnsembleConfig`, `DynamicsEnsemble` (M MLPs: full state + action chunk + task → standardised
  change of the full state over the chunk), `save_dynamics_ensemble`, `load_dynamics_ensemble`.
- `training`: one-chunk pairs from episode datasets (`ChunkPairs`), splits by episode, bootstrap training and
  held-out evaluation (MSE, disagreement–error correlation), `train_dynamics_ensemble`.
- `reward`: the reward (`DynamicsDisagreementReward`) and its factory, registered in `rewards.base.BUILTIN_REWARDS`.
"""

from rewards.dynamics_ensemble.model import (
    DynamicsEnsemble,
    DynamicsEnsembleConfig,
    load_dynamics_ensemble,
    save_dynamics_ensemble,
)
from rewards.dynamics_ensemble.reward import DynamicsDisagreementReward, build_dynamics_disagreement_reward
from rewards.dynamics_ensemble.training import (
    ChunkPairs,
    chunk_pairs,
    chunk_pairs_from_datasets,
    evaluate_dynamics_ensemble,
    fit_dynamics_ensemble,
    split_pairs_by_episode,
    train_dynamics_ensemble,
)

__all__ = [
    "ChunkPairs",
    "DynamicsDisagreementReward",
    "DynamicsEnsemble",
    "DynamicsEnsembleConfig",
    "build_dynamics_disagreement_reward",
    "chunk_pairs",
    "chunk_pairs_from_datasets",
    "evaluate_dynamics_ensemble",
    "fit_dynamics_ensemble",
    "load_dynamics_ensemble",
    "save_dynamics_ensemble",
    "split_pairs_by_episode",
    "train_dynamics_ensemble",
]
