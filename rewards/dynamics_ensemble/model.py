"""Dynamics ensemble: M small MLPs predicting the change of the full simulator state over one action chunk.

MOPO (Yu et al. 2020, "Model-based Offline Policy Optimization") penalises a learned model's reward by an
estimate of the model's error; the disagreement of an ensemble of dynamics models trained on the same data (different
initialisations and bootstrap resamples) is the usual stand-in. Here the World Expert is the model whose errors matter,
and the ensemble is a separate, cheap check of its full-state predictions: where the members disagree, the data did
not pin the dynamics down, so the World Expert is likely to be wrong there too.

Each member maps (full state s_t [F], the chunk's H actions flattened [H·A], task one-hot [K]) to the standardised
change (s_{t+H} − s_t − out_mean) / out_std [F]. Inputs and outputs are standardised with the training split's mean
and std (std clamped ≥ 1e-3); dims that were constant in training (Meta-World's unused second object, the goal) are
masked out of the input and of the output, so they neither move a prediction nor count in the disagreement.

Saved as ``config.json`` + ``model.safetensors`` (`save_dynamics_ensemble`, `load_dynamics_ensemble`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rewards.model_files import load_model_files, save_model_files

MODEL_TYPE = "wlarl_dynamics_ensemble"
MIN_STD = 1e-3  # dims whose training std is below this are constant: clamped std, and masked out
METAWORLD_FULL_STATE_DIM = 39


@dataclass
class DynamicsEnsembleConfig:
    """Config of `DynamicsEnsemble` (saved as config.json).

    Args:
        full_state_dim: F, size of the full simulator state (Meta-World: 39).
        action_dim: A, size of one action (Meta-World: 4).
        horizon: H, actions per chunk (the policy's chunk size).
        tasks: the task vocabulary (order defines the one-hot); another task is an error.
        members: M ≥ 2, the ensemble size (3 or more for a useful disagreement; 5 by default).
        hidden: width of each member's hidden layers.
        layers: number of hidden layers per member.
        seed: member m is initialised from seed + m.
    """

    full_state_dim: int = METAWORLD_FULL_STATE_DIM
    action_dim: int = 4
    horizon: int = 8
    tasks: list[str] = field(default_factory=list)
    members: int = 5
    hidden: int = 128
    layers: int = 2
    seed: int = 0
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        self.tasks = [str(t) for t in self.tasks]
        if not self.tasks:
            raise ValueError(
                "DynamicsEnsembleConfig.tasks is empty: give the task vocabulary (the dataset's task names)"
            )
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"DynamicsEnsembleConfig.tasks must be unique, got {self.tasks}")
        for name in ("full_state_dim", "action_dim", "horizon", "hidden", "layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"DynamicsEnsembleConfig.{name} must be an integer > 0, got {getattr(self, name)!r}")
        if not isinstance(self.members, int) or self.members < 2:
            raise ValueError(
                f"DynamicsEnsembleConfig.members must be an integer ≥ 2 (a disagreement needs several members; "
                f"3 or more recommended), got {self.members!r}"
            )
        if self.model_type != MODEL_TYPE:
            raise ValueError(f"DynamicsEnsembleConfig: model_type is {self.model_type!r}, expected {MODEL_TYPE!r}")

    @property
    def input_dim(self) -> int:
        """D = F + H·A, the standardised inputs before the task one-hot."""
        return self.full_state_dim + self.horizon * self.action_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicsEnsembleConfig:
        """Build from a dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


class EnsembleLinear(nn.Module):
    """M independent linear layers applied at once: x [M, N, I] → [M, N, O] (weight [M, I, O], bias [M, 1, O])."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))

    def reset_member(self, m: int, gen: torch.Generator) -> None:
        """nn.Linear's default init (uniform ±1/√fan_in for weight and bias) for member m, drawn from `gen`."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        with torch.no_grad():
            self.weight[m].copy_(torch.empty(self.weight.shape[1:]).uniform_(-bound, bound, generator=gen))
            self.bias[m].copy_(torch.empty(self.bias.shape[1:]).uniform_(-bound, bound, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)  # [M, N, O]


class DynamicsEnsemble(nn.Module):
    """M task-conditioned MLPs: (full state, action chunk, task) → standardised full-state change over the chunk.

    Buffers ``in_mean``, ``in_std``, ``in_active`` [D] standardise and mask the inputs (full state, then the
    flattened actions); ``out_mean``, ``out_std``, ``out_active`` [F] standardise and mask the change
    s_{t+H} − s_t. Fit them with `set_normalisation` before training.

    Example:
        >>> ens = DynamicsEnsemble(DynamicsEnsembleConfig(tasks=["reach-v3"], members=3))
        >>> u = ens.disagreement(torch.zeros(2, 39), torch.zeros(2, 8, 4), ["reach-v3"] * 2)  # [2]
    """

    source: str | None = None  # the folder `load_dynamics_ensemble` read it from (named in errors)

    def __init__(self, config: DynamicsEnsembleConfig) -> None:
        super().__init__()
        self.config = config
        d, f = config.input_dim, config.full_state_dim
        self.register_buffer("in_mean", torch.zeros(d))
        self.register_buffer("in_std", torch.ones(d))
        self.register_buffer("in_active", torch.ones(d))
        self.register_buffer("out_mean", torch.zeros(f))
        self.register_buffer("out_std", torch.ones(f))
        self.register_buffer("out_active", torch.ones(f))
        widths = [d + len(config.tasks)] + [config.hidden] * config.layers + [f]
        self.layers = nn.ModuleList(EnsembleLinear(config.members, i, o) for i, o in zip(widths[:-1], widths[1:]))
        for m in range(config.members):  # a different seed per member
            gen = torch.Generator().manual_seed(config.seed + m)
            for layer in self.layers:
                layer.reset_member(m, gen)
        self._index = {name: i for i, name in enumerate(config.tasks)}

    @property
    def device(self) -> torch.device:
        return self.in_mean.device

    # -- inputs ------------------------------------------------------------------------------------------------
    def task_ids(self, task_names: Sequence[str]) -> torch.Tensor:
        """long [N] indices into ``config.tasks``; an unknown task raises a ValueError naming it and the known ones."""
        try:
            ids = [self._index[t] for t in task_names]
        except KeyError as e:
            raise ValueError(
                f"dynamics ensemble: unknown task {e.args[0]!r}; the ensemble knows {self.config.tasks}. Retrain it "
                f"with recipes/train_dynamics_ensemble.py on episodes of this task."
            ) from None
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def check_inputs(self, full_states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """full states float [N, F] and actions [N, H, A] (or [N, H·A]) on the model's device; wrong shapes raise a
        ValueError naming what was expected. Returns (full states [N, F], actions [N, H·A])."""
        c = self.config
        full_states = torch.as_tensor(full_states).float()
        actions = torch.as_tensor(actions).float()
        if full_states.ndim != 2 or full_states.shape[1] != c.full_state_dim:
            raise ValueError(
                f"dynamics ensemble: expected full states [N, {c.full_state_dim}], got {tuple(full_states.shape)}"
            )
        n = full_states.shape[0]
        if actions.shape in ((n, c.horizon, c.action_dim), (n, c.horizon * c.action_dim)):
            return full_states.to(self.device), actions.reshape(n, -1).to(self.device)  # [N, F], [N, H*A]
        raise ValueError(
            f"dynamics ensemble: expected actions [N={n}, H={c.horizon}, A={c.action_dim}] (one chunk per full "
            f"state), got {tuple(actions.shape)}"
        )

    def set_normalisation(self, full_states: torch.Tensor, actions: torch.Tensor, next_full_states: torch.Tensor):
        """Fit the input and output statistics on training pairs: full states [R, F], actions [R, H, A], the full
        states after the chunk [R, F]."""
        x, a = self.check_inputs(full_states, actions)
        delta = torch.as_tensor(next_full_states).float().to(self.device) - x  # [R, F]
        if delta.shape != x.shape:
            raise ValueError(f"dynamics ensemble: next full states {tuple(delta.shape)}, full states {tuple(x.shape)}")
        for prefix, values in (("in", torch.cat([x, a], dim=1)), ("out", delta)):  # [R, D], [R, F]
            std = values.std(dim=0, unbiased=False) if len(values) > 1 else torch.zeros(values.shape[1])
            getattr(self, f"{prefix}_mean").copy_(values.mean(dim=0))
            getattr(self, f"{prefix}_active").copy_((std >= MIN_STD).float())
            getattr(self, f"{prefix}_std").copy_(std.clamp(min=MIN_STD))

    def standardise_change(self, full_states: torch.Tensor, next_full_states: torch.Tensor) -> torch.Tensor:
        """The standardised, masked change float [N, F] of `full_states` → `next_full_states` (the training target)."""
        delta = torch.as_tensor(next_full_states).float().to(self.device) - torch.as_tensor(full_states).float().to(
            self.device
        )
        return (delta - self.out_mean) / self.out_std * self.out_active  # [N, F]

    # -- outputs -----------------------------------------------------------------------------------------------
    def encode(
        self, full_states: torch.Tensor, actions: torch.Tensor, tasks: Sequence[str] | torch.Tensor
    ) -> torch.Tensor:
        """Standardised, masked inputs with the task one-hot, float [N, D+K]."""
        x, a = self.check_inputs(full_states, actions)
        ids = tasks.to(self.device) if isinstance(tasks, torch.Tensor) else self.task_ids(tasks)
        if ids.shape != (x.shape[0],):
            raise ValueError(f"dynamics ensemble: {x.shape[0]} full states but {tuple(ids.shape)} tasks")
        z = (torch.cat([x, a], dim=1) - self.in_mean) / self.in_std * self.in_active  # [N, D]
        one_hot = nn.functional.one_hot(ids, len(self.config.tasks)).to(z.dtype)  # [N, K]
        return torch.cat([z, one_hot], dim=1)  # [N, D+K]

    def members_forward(self, h: torch.Tensor) -> torch.Tensor:
        """Member m on its own inputs h[m]: float [M, N, D+K] → standardised change [M, N, F] (0 on masked dims)."""
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = nn.functional.silu(h)
        return h * self.out_active  # [M, N, F]

    def forward(
        self, full_states: torch.Tensor, actions: torch.Tensor, tasks: Sequence[str] | torch.Tensor
    ) -> torch.Tensor:
        """Every member's standardised change, float [M, N, F] (0 on masked-out dims).

        Args:
            full_states: float [N, F], the state before the chunk.
            actions: float [N, H, A] (or [N, H·A]), the chunk.
            tasks: N task names, or long [N] indices from `task_ids`.
        """
        h = self.encode(full_states, actions, tasks)  # [N, D+K]
        return self.members_forward(h.expand(self.config.members, -1, -1))  # [M, N, F]

    @torch.no_grad()
    def predict(
        self,
        full_states: torch.Tensor,
        actions: torch.Tensor,
        task_names: Sequence[str],
        batch_size: int = 8192,
    ) -> torch.Tensor:
        """Every member's standardised change, float [M, N, F] on CPU, in eval mode.

        Args:
            full_states: float [N, F].
            actions: float [N, H, A].
            task_names: N names from ``config.tasks``.
        """
        x, a = self.check_inputs(full_states, actions)
        if len(task_names) != len(x):
            raise ValueError(f"dynamics ensemble: {len(x)} full states but {len(task_names)} task names")
        ids = self.task_ids(task_names)
        was_training = self.training
        self.eval()
        out = [self(x[i : i + batch_size], a[i : i + batch_size], ids[i : i + batch_size]).cpu()
               for i in range(0, len(ids), batch_size)]  # fmt: skip
        self.train(was_training)
        return torch.cat(out, dim=1) if out else torch.zeros(self.config.members, 0, self.config.full_state_dim)

    def predict_next(
        self, full_states: torch.Tensor, actions: torch.Tensor, task_names: Sequence[str]
    ) -> torch.Tensor:
        """The ensemble-mean full state after the chunk, float [N, F] on CPU (masked-out dims: the training mean
        change)."""
        z = self.predict(full_states, actions, task_names).mean(dim=0)  # [N, F]
        return torch.as_tensor(full_states).float().cpu() + z * self.out_std.cpu() + self.out_mean.cpu()

    def spread(self, changes: torch.Tensor) -> torch.Tensor:
        """Disagreement of member predictions float [M, N, F] → [N]: the mean over the active output dims of the
        standard deviation across members (population std, in standardised units)."""
        active = self.out_active.cpu().bool()
        return changes[..., active].std(dim=0, unbiased=False).mean(dim=-1)  # [N]

    def distance(self, changes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean absolute difference over the active output dims between the ensemble mean of `changes` [M, N, F]
        and a standardised change `target` [N, F] → [N] (same units as `spread`)."""
        active = self.out_active.cpu().bool()
        return (changes.mean(dim=0) - target.cpu())[:, active].abs().mean(dim=-1)  # [N]

    def disagreement(
        self, full_states: torch.Tensor, actions: torch.Tensor, task_names: Sequence[str]
    ) -> torch.Tensor:
        """Ensemble disagreement float [N] on CPU (see `spread`) of chunks `actions` [N, H, A] from `full_states`
        [N, F]."""
        return self.spread(self.predict(full_states, actions, task_names))

    def error(
        self,
        full_states: torch.Tensor,
        actions: torch.Tensor,
        next_full_states: torch.Tensor,
        task_names: Sequence[str],
    ) -> torch.Tensor:
        """Distance float [N] on CPU (see `distance`) between the ensemble's mean change and the change to
        `next_full_states` [N, F] (e.g. the World Expert's prediction)."""
        target = self.standardise_change(full_states, next_full_states)  # [N, F]
        return self.distance(self.predict(full_states, actions, task_names), target)


# ----------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------


def save_dynamics_ensemble(model: DynamicsEnsemble, output_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and then ``config.json`` into `output_dir`, each atomically; returns the folder."""
    return save_model_files(model, output_dir)


def load_dynamics_ensemble(path: str | os.PathLike, device: str | torch.device | None = None) -> DynamicsEnsemble:
    """Load an ensemble saved with `save_dynamics_ensemble` (a recipes/train_dynamics_ensemble.py output_dir works:
    its `final/` is used).

    Raises:
        FileNotFoundError: no config.json or no model.safetensors (the message names the file).
        ValueError: a config or weights file that cannot be read (truncated, corrupt, other keys or shapes,
            non-finite values); the message names the file and what was expected.
    """
    return load_model_files(
        path, config_cls=DynamicsEnsembleConfig, model_cls=DynamicsEnsemble, what="dynamics ensemble",
        retrain="train one with `python recipes/train_dynamics_ensemble.py --dataset_path ... --output_dir ...`",
        model_type=MODEL_TYPE, device=device,
    )  # fmt: skip
