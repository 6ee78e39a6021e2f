"""The `dynamics_disagreement` built-in: a MOPO-style uncertainty penalty from a `DynamicsEnsemble`.

MOPO (Yu et al. 2020) optimises r̃ = r − λ·u(s, a), u an estimate of the learned model's error. Here a row's
value is −(mean over the chunks it ran of u_t), u_t the ensemble's uncertainty about chunk t given the full state
before it and the chunk's H actions; listed with weight λ in ``reward_weights`` (0.5–5 in MOPO) the penalty is
subtracted from the other rewards. Modes:

- ``disagreement`` (default): u_t = mean over the active output dims of the std across members of the predicted
  standardised change (`DynamicsEnsemble.spread`): large where the training data did not pin the dynamics down.
- ``error``: u_t = mean absolute difference over those dims between the World Expert's change (full_states[:, t]
  minus the state before) and the ensemble's mean change (`DynamicsEnsemble.distance`): large where the World
  Expert's prediction leaves what the ensemble expects.

The state before chunk t ≥ 1 is ``full_states[:, t-1]``; before chunk 0 it is ``start_full_states`` [N, F], the
start observation's full state (None when the start carries none: then chunks 1..T-1 are scored, and a row that ran
chunk 0 alone gets None, skipped: no evidence either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.base import RewardLoadError, reward_factory
from rewards.dynamics_ensemble.model import DynamicsEnsemble, load_dynamics_ensemble

MODES = ("disagreement", "error")


class DynamicsDisagreementReward:
    """A dynamics ensemble as a per-row uncertainty penalty (≤ 0).

    Args:
        model: a trained `DynamicsEnsemble`.
        mode: "disagreement" (spread of the members) or "error" (distance of the World Expert's change from the
            ensemble mean).
    """

    __name__ = "dynamics_disagreement"

    def __init__(self, model: DynamicsEnsemble, mode: str = "disagreement") -> None:
        if mode not in MODES:
            raise ValueError(f"{self.__name__}: mode must be one of {MODES}, got {mode!r}")
        self.model = model.eval()
        self.mode = mode

    def chunk_uncertainty(
        self,
        full_states: torch.Tensor,
        actions: torch.Tensor,
        task_names: Sequence[str],
        start_full_states: torch.Tensor | None = None,
        chunks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-chunk uncertainty u float [N, T] and which chunks were scored, bool [N, T].

        Args:
            full_states: float [N, T, F] the full state after each chunk.
            actions: float [N, T, H, A] the executed chunks.
            task_names: N task names.
            start_full_states: float [N, F] the full state before chunk 0, or None (chunk 0 is not scored).
            chunks: bool [N, T] the chunks to score (default all that can be); u is 0 elsewhere.
        """
        n, t, f = full_states.shape
        if start_full_states is not None:
            before = torch.cat([start_full_states[:, None], full_states[:, :-1]], dim=1)  # [N, T, F]
            can = torch.ones(n, t, dtype=torch.bool)
        else:
            before = torch.cat([torch.zeros(n, 1, f), full_states[:, :-1]], dim=1)  # [N, T, F]; chunk 0 unknown
            can = torch.ones(n, t, dtype=torch.bool)
            can[:, 0] = False
        scored = can if chunks is None else can & chunks  # [N, T]
        rows, cols = scored.nonzero(as_tuple=True)  # [K] each
        u = torch.zeros(n, t)
        if len(rows) == 0:
            return u, scored
        names = [task_names[i] for i in rows.tolist()]
        x, a = before[rows, cols], actions[rows, cols]  # [K, F], [K, H, A]
        if self.mode == "disagreement":
            values = self.model.disagreement(x, a, names)  # [K]
        else:
            values = self.model.error(x, a, full_states[rows, cols], names)  # [K]
        u[rows, cols] = values.float()
        return u, scored

    def __call__(
        self,
        *,
        full_states: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        task_names: Sequence[str],
        alive: torch.Tensor | None = None,
        start_full_states: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Args: full_states float [N, T, F] (None: an error); actions float [N, T, H, A]; task_names N; alive bool
        [N, T]; start_full_states float [N, F] (optional). Returns N values ≤ 0, None for a row with no scored
        chunk."""
        c = self.model.config
        if full_states is None:
            raise ValueError(
                f"{self.__name__}: the engine gave no full states (full_states=None); use the real engine or a World "
                f"Expert with full_state_dim > 0"
            )
        full_states = torch.as_tensor(full_states).detach().float().cpu()
        if full_states.ndim != 3 or full_states.shape[2] != c.full_state_dim:
            raise ValueError(
                f"{self.__name__}: expected full_states [N, T, F={c.full_state_dim}], got {tuple(full_states.shape)}"
            )
        n, t, _ = full_states.shape
        if actions is None:
            raise ValueError(f"{self.__name__}: no actions given; expected actions [N, T, H, A]")
        actions = torch.as_tensor(actions).detach().float().cpu()
        if actions.shape != (n, t, c.horizon, c.action_dim):
            raise ValueError(
                f"{self.__name__}: expected actions [N={n}, T={t}, H={c.horizon}, A={c.action_dim}] (the ensemble's "
                f"chunk size and action dim), got {tuple(actions.shape)}"
            )
        if len(task_names) != n:
            raise ValueError(f"{self.__name__}: {n} rows of full_states but {len(task_names)} task names")
        alive = torch.ones(n, t, dtype=torch.bool) if alive is None else torch.as_tensor(alive).bool().cpu()
        if alive.shape != (n, t):
            raise ValueError(f"{self.__name__}: alive is {tuple(alive.shape)}, full_states {(n, t)} chunks")
        if start_full_states is not None:
            start_full_states = torch.as_tensor(start_full_states).detach().float().cpu()
            if start_full_states.shape != (n, c.full_state_dim):
                raise ValueError(
                    f"{self.__name__}: expected start_full_states [N={n}, F={c.full_state_dim}], got "
                    f"{tuple(start_full_states.shape)}"
                )
        ran = alive.clone()
        ran[~alive.any(dim=1), 0] = True  # a row that ran no chunk counts chunk 0, as last_alive_index does
        u, scored = self.chunk_uncertainty(full_states, actions, list(task_names), start_full_states, ran)  # [N, T]
        count = scored.sum(dim=1)  # [N]
        mean = u.sum(dim=1) / count.clamp(min=1)  # [N]
        return [-float(v) if k > 0 else None for v, k in zip(mean.tolist(), count.tolist())]


@reward_factory
def build_dynamics_disagreement_reward(
    dynamics_ensemble_path: str | None = None,
    mode: str = "disagreement",
    device: str | torch.device | None = None,
    **unused: Any,
) -> DynamicsDisagreementReward:
    """The `dynamics_disagreement` built-in: minus the mean over the chunks run of the ensemble's uncertainty (options
    `mode`: "disagreement" | "error", `device`). Weight it with λ in ``reward_weights`` (MOPO: 0.5–5)."""
    if not dynamics_ensemble_path:
        raise RewardLoadError(
            "reward 'dynamics_disagreement' needs `dynamics_ensemble_path` (a recipes/train_dynamics_ensemble.py "
            "output_dir or its final/): pass it in the reward context (build_reward_scorer(..., "
            "dynamics_ensemble_path=...)) or with --reward_kwargs "
            '\'{"dynamics_disagreement": {"dynamics_ensemble_path": "runs/dynamics_ensemble"}}\''
        )
    if mode not in MODES:
        raise ValueError(f"dynamics_disagreement: mode must be one of {MODES}, got {mode!r}")
    return DynamicsDisagreementReward(load_dynamics_ensemble(dynamics_ensemble_path, device), mode)
