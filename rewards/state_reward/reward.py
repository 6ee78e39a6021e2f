"""The `state_success`, `state_progress` and `state_value` built-ins: a trained `StateRewardModel` scores full states.

All read ``full_states`` [N, T, F] (the simulator's with the real engine, the World Expert's prediction in
imagination when it models full states) and score one chunk per row ("final": the last chunk run) or every chunk
run ("max": the best of them). `state_success` is the calibrated success probability; `state_progress` is 1.0 when
that probability reaches the model's threshold, else ``failure_scale`` · progress, so that in a group every
predicted success outranks every failure and failures are ordered by how far they got. `state_value` is the same
with the value head (discounted success-to-go) in place of progress: a short branch that has not finished is scored
by how likely, and how soon, it succeeds later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.base import RewardLoadError, last_alive_index, reward_factory
from rewards.state_reward.model import StateRewardModel, load_state_reward

MODES = ("final", "max")
KINDS = ("success", "progress", "value")


class StateReward:
    """A state reward model as a reward on full states.

    Args:
        model: a trained, calibrated `StateRewardModel`.
        kind: "success" (the probability), "progress" (1.0 at success, else failure_scale · progress) or "value"
            (1.0 at success, else failure_scale · value; needs a model with a value head).
        mode: "final" (the last chunk each row ran) or "max" (the largest value over the chunks it ran).
        failure_scale: in [0, 1); the most a failure can score with kinds "progress" and "value".
    """

    def __init__(self, model: StateRewardModel, kind: str, mode: str = "final", failure_scale: float = 0.9) -> None:
        if kind not in KINDS:
            raise ValueError(f"state reward: kind must be one of {KINDS}, got {kind!r}")
        self.__name__ = f"state_{kind}"
        if kind == "value":
            model.require_value_head(self.__name__)
        if mode not in MODES:
            raise ValueError(f"{self.__name__}: mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= failure_scale < 1.0:
            raise ValueError(
                f"{self.__name__}: failure_scale must be in [0, 1) so that a success outranks every failure, got "
                f"{failure_scale}"
            )
        self.model = model.eval()
        self.kind, self.mode, self.failure_scale = kind, mode, float(failure_scale)

    @property
    def threshold(self) -> float:
        return self.model.config.threshold

    def chunk_values(self, full_states: torch.Tensor, task_names: Sequence[str]) -> torch.Tensor:
        """Per-chunk values float [N, T] of full states float [N, T, F]."""
        n, t, f = full_states.shape
        flat = full_states.reshape(n * t, f)  # [N*T, F]
        return self._values(flat, [name for name in task_names for _ in range(t)]).reshape(n, t)  # [N, T]

    def _values(self, full_states: torch.Tensor, task_names: Sequence[str]) -> torch.Tensor:
        """Values float [M] of full states float [M, F]."""
        probs, progress = self.model.predict(full_states, task_names)  # [M] each
        if self.kind == "success":
            return probs
        dense = self.model.predict_value(full_states, task_names) if self.kind == "value" else progress  # [M]
        return torch.where(probs >= self.threshold, torch.ones_like(dense), self.failure_scale * dense)

    def __call__(
        self,
        *,
        full_states: torch.Tensor | None = None,
        task_names: Sequence[str],
        alive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Args: full_states float [N, T, F] (None: an error); task_names N; alive bool [N, T]. Returns N floats."""
        if full_states is None:
            raise ValueError(
                f"{self.__name__}: the engine gave no full states (full_states=None); use the real engine or a World "
                f"Expert with full_state_dim > 0"
            )
        full_states = torch.as_tensor(full_states).detach().float().cpu()
        if full_states.ndim != 3:
            raise ValueError(f"{self.__name__}: expected full_states [N, T, F], got {tuple(full_states.shape)}")
        n, t, _ = full_states.shape
        if len(task_names) != n:
            raise ValueError(f"{self.__name__}: {n} rows of full_states but {len(task_names)} task names")
        alive = torch.ones(n, t, dtype=torch.bool) if alive is None else torch.as_tensor(alive).bool().cpu()
        if alive.shape != (n, t):
            raise ValueError(f"{self.__name__}: alive is {tuple(alive.shape)}, full_states {(n, t)} chunks")
        if self.mode == "final":  # only the last chunk each row ran: T times cheaper than every chunk
            last = last_alive_index(alive)  # [N]
            return self._values(full_states[torch.arange(n), last], list(task_names)).tolist()
        values = self.chunk_values(full_states, task_names)  # [N, T]
        ran = alive.clone()
        ran[~alive.any(dim=1), 0] = True  # a row that ran no chunk is scored at chunk 0, as last_alive_index does
        return values.masked_fill(~ran, float("-inf")).amax(dim=1).tolist()


def _load(name: str, state_reward_path: str | None, device: str | torch.device | None) -> StateRewardModel:
    if not state_reward_path:
        raise RewardLoadError(
            f"reward {name!r} needs `state_reward_path` (a recipes/train_state_reward.py output_dir or its final/): "
            f"pass it in the reward context (build_reward_scorer(..., state_reward_path=...)) or with "
            f'--reward_kwargs \'{{"{name}": {{"state_reward_path": "runs/state_reward"}}}}\''
        )
    return load_state_reward(state_reward_path, device)


@reward_factory
def build_state_success_reward(
    state_reward_path: str | None = None,
    mode: str = "final",
    device: str | torch.device | None = None,
    **unused: Any,
) -> StateReward:
    """The `state_success` built-in: calibrated success probability of the full state (option `mode`)."""
    return StateReward(_load("state_success", state_reward_path, device), "success", mode)


@reward_factory
def build_state_progress_reward(
    state_reward_path: str | None = None,
    mode: str = "final",
    failure_scale: float = 0.9,
    device: str | torch.device | None = None,
    **unused: Any,
) -> StateReward:
    """The `state_progress` built-in: 1.0 at predicted success, else failure_scale · progress (options `mode`,
    `failure_scale`)."""
    return StateReward(_load("state_progress", state_reward_path, device), "progress", mode, failure_scale)


@reward_factory
def build_state_value_reward(
    state_reward_path: str | None = None,
    mode: str = "final",
    failure_scale: float = 0.9,
    device: str | torch.device | None = None,
    **unused: Any,
) -> StateReward:
    """The `state_value` built-in: 1.0 at predicted success, else failure_scale · value (discounted success-to-go;
    options `mode`, `failure_scale`). Needs a model trained with ``--value_head true``."""
    return StateReward(_load("state_value", state_reward_path, device), "value", mode, failure_scale)
