"""State reward model: a small MLP on the full simulator state that scores success and dense progress.

Image rewards miss 2–3 px objects at 64 px; Meta-World's success is a function of the full state (hand, gripper,
object and goal positions), so a head on ``full_state`` [F] sees what decides it. Inputs are the full state, with
Meta-World's object−goal, hand−goal and hand−object offsets and their lengths appended (``features="metaworld"``,
F = 39), standardised with the training split's mean and std, and a one-hot of the task. Outputs: a success logit
(Platt-scaled into a probability, decided at a calibrated ``threshold``), a progress value in [0, 1] that
regresses clip(shaped reward / reward_scale, 0, 1) and, with ``value_head``, a value in [0, 1]: the discounted
success-to-go, value_discount ** (env steps until the episode's next successful frame), 0 when none follows.

Saved as ``config.json`` + ``model.safetensors`` (`save_state_reward`, `load_state_reward`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewards.model_files import load_model_files, save_model_files

MODEL_TYPE = "wlarl_state_reward"
MIN_STD = 1e-3  # dims whose training std is below this are constant: clamped std, and masked out of the input
FEATURES = ("metaworld", "raw")
METAWORLD_FULL_STATE_DIM = 39
# Meta-World full-state layout: hand xyz [0:3], gripper [3], object 1 pos [4:7], goal pos [36:39].
_HAND, _OBJ, _GOAL = slice(0, 3), slice(4, 7), slice(36, 39)


@dataclass
class StateRewardConfig:
    """Config of `StateRewardModel` (saved as config.json).

    Args:
        full_state_dim: F, size of the full simulator state (Meta-World: 39).
        tasks: the task vocabulary (order defines the one-hot); scoring another task is an error.
        hidden: width of the MLP's hidden layers.
        layers: number of hidden layers.
        features: "metaworld" appends object−goal, hand−goal, hand−object offsets and their lengths (needs F = 39);
            "raw" uses the full state alone.
        reward_scale: progress target = clip(shaped reward / reward_scale, 0, 1) (Meta-World's reward is in [0, 10]).
        platt_scale, platt_bias: calibration, p = sigmoid(platt_scale · logit + platt_bias).
        threshold: decision threshold on the calibrated success probability.
        value_head: a third output, the value (discounted success-to-go); False for models saved before it existed.
        value_discount: γ per env step of the value target γ^k (k: env steps until the next successful frame), in
            (0, 1].
    """

    full_state_dim: int = METAWORLD_FULL_STATE_DIM
    tasks: list[str] = field(default_factory=list)
    hidden: int = 128
    layers: int = 2
    features: str = "metaworld"
    reward_scale: float = 10.0
    platt_scale: float = 1.0
    platt_bias: float = 0.0
    threshold: float = 0.5
    value_head: bool = False
    value_discount: float = 0.99
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        self.tasks = [str(t) for t in self.tasks]
        if not self.tasks:
            raise ValueError("StateRewardConfig.tasks is empty: give the task vocabulary (the dataset's task names)")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"StateRewardConfig.tasks must be unique, got {self.tasks}")
        if self.full_state_dim <= 0:
            raise ValueError(f"StateRewardConfig.full_state_dim must be > 0, got {self.full_state_dim}")
        if self.hidden <= 0 or self.layers <= 0:
            raise ValueError(f"StateRewardConfig: hidden ({self.hidden}) and layers ({self.layers}) must be > 0")
        if self.features not in FEATURES:
            raise ValueError(f"StateRewardConfig.features must be one of {FEATURES}, got {self.features!r}")
        if self.features == "metaworld" and self.full_state_dim != METAWORLD_FULL_STATE_DIM:
            raise ValueError(
                f"StateRewardConfig: features='metaworld' reads Meta-World's {METAWORLD_FULL_STATE_DIM}-d layout, but "
                f"full_state_dim is {self.full_state_dim}; use features='raw'"
            )
        if not self.reward_scale > 0:
            raise ValueError(f"StateRewardConfig.reward_scale must be > 0, got {self.reward_scale}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"StateRewardConfig.threshold must be in [0, 1], got {self.threshold}")
        if not isinstance(self.value_head, bool):
            raise ValueError(f"StateRewardConfig.value_head must be true or false, got {self.value_head!r}")
        if not 0.0 < self.value_discount <= 1.0:
            raise ValueError(f"StateRewardConfig.value_discount must be in (0, 1], got {self.value_discount}")
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"StateRewardConfig: model_type is {self.model_type!r}, expected {MODEL_TYPE!r}")

    @property
    def feature_dim(self) -> int:
        """D, the size of the input features before the task one-hot."""
        return self.full_state_dim + (12 if self.features == "metaworld" else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateRewardConfig:
        """Build from a dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


def state_features(full_states: torch.Tensor, features: str) -> torch.Tensor:
    """Model input features of full states, float [N, F] → [N, D] (D = F, or F + 12 for "metaworld")."""
    x = full_states.float()
    if features == "raw":
        return x
    offsets = [x[:, _OBJ] - x[:, _GOAL], x[:, _HAND] - x[:, _GOAL], x[:, _HAND] - x[:, _OBJ]]  # 3 × [N, 3]
    lengths = [o.norm(dim=1, keepdim=True) for o in offsets]  # 3 × [N, 1]: success is often a distance below a radius
    return torch.cat([x, *offsets, *lengths], dim=1)  # [N, F + 12]


class StateRewardModel(nn.Module):
    """Task-conditioned MLP: full state + task → success logit, progress and (with ``value_head``) value.

    Buffers ``mean``, ``std`` [D] standardise the features (std clamped ≥ 1e-3) and ``active`` [D] masks out the
    features that were constant in training (e.g. Meta-World's unused second object), so that a World Expert's small
    errors on them cannot move the output.

    Example:
        >>> model = StateRewardModel(StateRewardConfig(tasks=["reach-v3"]))
        >>> prob, progress = model.predict(torch.zeros(2, 39), ["reach-v3", "reach-v3"])
    """

    source: str | None = None  # the folder `load_state_reward` read it from (named in errors)

    def __init__(self, config: StateRewardConfig) -> None:
        super().__init__()
        self.config = config
        d = config.feature_dim
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.register_buffer("active", torch.ones(d))
        blocks: list[nn.Module] = []
        width = d + len(config.tasks)
        for _ in range(config.layers):
            blocks += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        self.trunk = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 3 if config.value_head else 2)  # [success logit, progress logit, value logit]
        self._index = {name: i for i, name in enumerate(config.tasks)}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def set_normalisation(self, full_states: torch.Tensor) -> None:
        """Fit ``mean``, ``std`` and ``active`` on training full states float [M, F]."""
        x = state_features(self._check(full_states), self.config.features)  # [M, D]
        std = x.std(dim=0, unbiased=False) if len(x) > 1 else torch.zeros(x.shape[1])
        self.mean.copy_(x.mean(dim=0))
        self.active.copy_((std >= MIN_STD).float())
        self.std.copy_(std.clamp(min=MIN_STD))

    def task_ids(self, task_names: Sequence[str]) -> torch.Tensor:
        """long [N] indices into ``config.tasks``; an unknown task raises a ValueError naming it and the known ones."""
        try:
            ids = [self._index[t] for t in task_names]
        except KeyError as e:
            raise ValueError(
                f"state reward: unknown task {e.args[0]!r}; the model knows {self.config.tasks}. Retrain it with "
                f"recipes/train_state_reward.py on episodes of this task."
            ) from None
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _check(self, full_states: torch.Tensor) -> torch.Tensor:
        full_states = torch.as_tensor(full_states)
        if full_states.ndim != 2 or full_states.shape[1] != self.config.full_state_dim:
            raise ValueError(
                f"state reward: expected full states [N, {self.config.full_state_dim}], got {tuple(full_states.shape)}"
            )
        return full_states.to(self.device)

    def forward(
        self, full_states: torch.Tensor, tasks: Sequence[str] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw success logits, progress and value logits.

        Args:
            full_states: float [N, F].
            tasks: N task names, or long [N] indices from `task_ids`.

        Returns:
            (success logits float [N] (uncalibrated), progress float [N] in [0, 1], value logits float [N] — the value
            is their sigmoid — or None without ``value_head``).
        """
        x = self._check(full_states)
        ids = tasks.to(self.device) if isinstance(tasks, torch.Tensor) else self.task_ids(tasks)
        if ids.shape != (x.shape[0],):
            raise ValueError(f"state reward: {x.shape[0]} full states but {tuple(ids.shape)} tasks")
        z = (state_features(x, self.config.features) - self.mean) / self.std * self.active  # [N, D]
        one_hot = nn.functional.one_hot(ids, len(self.config.tasks)).to(z.dtype)  # [N, K]
        out = self.head(self.trunk(torch.cat([z, one_hot], dim=1)))  # [N, 2 or 3]
        return out[:, 0], torch.sigmoid(out[:, 1]), out[:, 2] if self.config.value_head else None

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Platt-scaled logits: platt_scale · logit + platt_bias."""
        return self.config.platt_scale * logits + self.config.platt_bias

    @torch.no_grad()
    def predict(
        self, full_states: torch.Tensor, task_names: Sequence[str], batch_size: int = 8192
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated success probability and progress, float [N] each on CPU, in eval mode.

        Args:
            full_states: float [N, F].
            task_names: N names from ``config.tasks``.
        """
        full_states = self._check(full_states)
        if len(task_names) != len(full_states):
            raise ValueError(f"state reward: {len(full_states)} full states but {len(task_names)} task names")
        ids = self.task_ids(task_names)
        was_training = self.training
        self.eval()
        probs, progress = [], []
        for i in range(0, len(ids), batch_size):
            logit, prog, _ = self(full_states[i : i + batch_size], ids[i : i + batch_size])
            probs.append(torch.sigmoid(self.calibrate(logit)).cpu())
            progress.append(prog.cpu())
        self.train(was_training)
        if not probs:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat(probs), torch.cat(progress)

    def require_value_head(self, what: str = "state reward") -> None:
        """Raise a ValueError naming the model and the fix when it has no value head."""
        if not self.config.value_head:
            where = f"state reward model {self.source!r}" if self.source else "this state reward model"
            raise ValueError(
                f"{what}: {where} has no value head (config value_head is false: trained before value heads existed "
                f"or with --value_head false); retrain it with `python recipes/train_state_reward.py "
                f"--value_head true --dataset_path ... --output_dir ...`"
            )

    @torch.no_grad()
    def predict_value(
        self, full_states: torch.Tensor, task_names: Sequence[str], batch_size: int = 8192
    ) -> torch.Tensor:
        """Value (discounted success-to-go, sigmoid of the value logit), float [N] in [0, 1] on CPU, in eval mode.

        Args:
            full_states: float [N, F].
            task_names: N names from ``config.tasks``.

        Raises:
            ValueError: the model has no value head (``config.value_head`` false).
        """
        self.require_value_head("predict_value")
        full_states = self._check(full_states)
        if len(task_names) != len(full_states):
            raise ValueError(f"state reward: {len(full_states)} full states but {len(task_names)} task names")
        ids = self.task_ids(task_names)
        was_training = self.training
        self.eval()
        values = [
            torch.sigmoid(self(full_states[i : i + batch_size], ids[i : i + batch_size])[2]).cpu()
            for i in range(0, len(ids), batch_size)
        ]
        self.train(was_training)
        return torch.cat(values) if values else torch.zeros(0)


# ----------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------


def save_state_reward(model: StateRewardModel, output_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and then ``config.json`` into `output_dir`, each atomically; returns the folder."""
    return save_model_files(model, output_dir)


def _head_hint(config: StateRewardConfig, expected: dict[str, tuple], got: dict[str, tuple]) -> str:
    e, g = expected.get("head.weight"), got.get("head.weight")
    if e is None or g is None or e[0] == g[0]:
        return ""
    return f" (config value_head is {str(config.value_head).lower()}: the head has {e[0]} outputs, the weights {g[0]})"


def load_state_reward(path: str | os.PathLike, device: str | torch.device | None = None) -> StateRewardModel:
    """Load a model saved with `save_state_reward` (a recipes/train_state_reward.py output_dir works: its `final/`
    is used).

    Raises:
        FileNotFoundError: no config.json or no model.safetensors (the message names the file).
        ValueError: a config or weights file that cannot be read (truncated, corrupt, other keys or shapes); the
            message names the file and what was expected.
    """
    return load_model_files(
        path, config_cls=StateRewardConfig, model_cls=StateRewardModel, what="state reward model",
        retrain="train one with `python recipes/train_state_reward.py --dataset_path ... --output_dir ...`",
        model_type=MODEL_TYPE, device=device, mismatch_hint=_head_hint,
    )  # fmt: skip
