"""Typed batch containers passed between rollout, rewards and the trainer.

Shape letters (see DESIGN.md): N rows · B start states · G group samples · T chunks per imagined episode ·
H actions per chunk · A action dim · S state dim · L text tokens · C,h,w image-latent grid · HxWx3 pixels.
Images are uint8 [.., H, W, 3] outside models.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch


def _check(name: str, value: Any, ndim: int, expected: str, dtype: torch.dtype | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {expected}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (shape {expected}), got {value.dtype}")


@dataclass
class Observation:
    """A batch of N observations.

    Attributes:
        images: uint8 [N, H, W, 3], upright camera frames.
        states: float32 [N, S] robot state.
        instructions: N natural-language instructions.
        task_names: N simulator task names.
        latents: optional float [N, C, h, w] image latents (set by the World Expert in imagination so that the
            policy need not re-encode its own predictions).
    """

    images: torch.Tensor
    states: torch.Tensor
    instructions: list[str]
    task_names: list[str]
    latents: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if isinstance(self.states, np.ndarray):
            self.states = torch.from_numpy(np.asarray(self.states, dtype=np.float32))
        _check("Observation.images", self.images, 4, "[N, H, W, 3] uint8", torch.uint8)
        if self.images.shape[-1] != 3:
            raise ValueError(f"Observation.images: expected shape [N, H, W, 3], got {tuple(self.images.shape)}")
        _check("Observation.states", self.states, 2, "[N, S] float32", torch.float32)
        n = self.images.shape[0]
        if self.states.shape[0] != n:
            raise ValueError(f"Observation.states: expected {n} rows like images, got {self.states.shape[0]}")
        if isinstance(self.instructions, str) or len(self.instructions) != n:
            raise ValueError(f"Observation.instructions: expected a list of {n} strings")
        if isinstance(self.task_names, str) or len(self.task_names) != n:
            raise ValueError(f"Observation.task_names: expected a list of {n} strings")
        if self.latents is not None:
            _check("Observation.latents", self.latents, 4, "[N, C, h, w]")
            if self.latents.shape[0] != n:
                raise ValueError(f"Observation.latents: expected {n} rows, got {self.latents.shape[0]}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def to(self, device: torch.device | str) -> Observation:
        return replace(
            self,
            images=self.images.to(device),
            states=self.states.to(device),
            latents=None if self.latents is None else self.latents.to(device),
        )

    def index(self, idx: torch.Tensor | list[int] | slice) -> Observation:
        """Rows `idx` of the batch (any index torch accepts on dim 0)."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            rows = torch.as_tensor(idx).tolist()
            if isinstance(rows, int):
                rows = [rows]
        t = torch.as_tensor(rows, dtype=torch.long, device=self.images.device)
        return Observation(
            images=self.images[t],
            states=self.states[t],
            instructions=[self.instructions[i] for i in rows],
            task_names=[self.task_names[i] for i in rows],
            latents=None if self.latents is None else self.latents[t.to(self.latents.device)],
        )

    def repeat_interleave(self, g: int) -> Observation:
        """[B] -> [B*G]: each row repeated G times consecutively (GRPO groups)."""
        return self.index(torch.arange(len(self)).repeat_interleave(g))

    @staticmethod
    def cat(items: list[Observation]) -> Observation:
        has_latents = all(o.latents is not None for o in items)
        return Observation(
            images=torch.cat([o.images for o in items]),
            states=torch.cat([o.states for o in items]),
            instructions=[s for o in items for s in o.instructions],
            task_names=[s for o in items for s in o.task_names],
            latents=torch.cat([o.latents for o in items]) if has_latents else None,
        )


@dataclass
class ActionSample:
    """What `WLAPolicy.act` returns for N rows, and what `log_prob` needs to rescore the same sample.

    Attributes:
        actions: float [N, H, A] action chunk in the env's action space.
        log_prob: float [N] log-probability of the action chunk under the sampling policy (summed over H, A and,
            for the flow head, over the stored denoising chain).
        log_prob_terms: float [N, H, A] (or [N, K, H, A] for flow) per-element terms that sum to `log_prob`.
        subtask_ids: long [N, L] sampled subtask token ids (padded with the pad id).
        subtask_mask: bool [N, L] True on real subtask tokens (including the end-of-subtask token).
        subtask_log_probs: float [N, L] per-token log-probs of the subtask (0 on padding).
        subtask_text: N decoded subtask strings.
        extras: head-specific tensors needed to recompute log-probs exactly (e.g. the flow chain [N, K+1, H, A]).
    """

    actions: torch.Tensor
    log_prob: torch.Tensor
    log_prob_terms: torch.Tensor
    subtask_ids: torch.Tensor
    subtask_mask: torch.Tensor
    subtask_log_probs: torch.Tensor
    subtask_text: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.actions.shape[0]

    def index(self, idx: torch.Tensor | list[int]) -> ActionSample:
        t = torch.as_tensor(idx, dtype=torch.long, device=self.actions.device)
        rows = t.tolist()
        return ActionSample(
            actions=self.actions[t],
            log_prob=self.log_prob[t],
            log_prob_terms=self.log_prob_terms[t],
            subtask_ids=self.subtask_ids[t],
            subtask_mask=self.subtask_mask[t],
            subtask_log_probs=self.subtask_log_probs[t],
            subtask_text=[self.subtask_text[i] for i in rows],
            extras={k: v[t] for k, v in self.extras.items()},
        )

    def detach(self) -> ActionSample:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.detach()
            elif isinstance(v, dict):
                v = {k: x.detach() for k, x in v.items()}
            out[f.name] = v
        return ActionSample(**out)

    @staticmethod
    def cat(items: list[ActionSample]) -> ActionSample:
        """Concatenate along N. Subtask tensors are right-padded to the longest L (pad id 0, mask False)."""
        max_l = max(s.subtask_ids.shape[1] for s in items)

        def pad(x: torch.Tensor, value: float | int | bool) -> torch.Tensor:
            if x.shape[1] == max_l:
                return x
            return torch.nn.functional.pad(x, (0, max_l - x.shape[1]), value=value)

        return ActionSample(
            actions=torch.cat([s.actions for s in items]),
            log_prob=torch.cat([s.log_prob for s in items]),
            log_prob_terms=torch.cat([s.log_prob_terms for s in items]),
            subtask_ids=torch.cat([pad(s.subtask_ids, 0) for s in items]),
            subtask_mask=torch.cat([pad(s.subtask_mask, False) for s in items]),
            subtask_log_probs=torch.cat([pad(s.subtask_log_probs, 0.0) for s in items]),
            subtask_text=[t for s in items for t in s.subtask_text],
            extras={k: torch.cat([s.extras[k] for s in items]) for k in items[0].extras},
        )


@dataclass
class WorldPrediction:
    """What the World Expert predicts for N rows after an action chunk.

    Attributes:
        latents: float [N, C, h, w] image latents at t+H (the subgoal).
        states: float32 [N, S] predicted robot state at t+H.
        success_logits: float [N] predicted task-success logit at t+H.
        images: uint8 [N, H, W, 3] decoded subgoal images, or None when decoding was not requested.
    """

    latents: torch.Tensor
    states: torch.Tensor
    success_logits: torch.Tensor
    images: torch.Tensor | None = None


@dataclass
class Trajectories:
    """N imagined (or real) episodes of up to T chunks, rows grouped as B starts × G samples (row = b*G + g).

    Attributes:
        observations: per chunk t < T, the Observation the policy acted on (N rows each).
        samples: per chunk t < T, the ActionSample drawn (on-policy log-probs included).
        subgoal_images: uint8 [N, T, H, W, 3] predicted images after each chunk.
        subgoal_latents: float [N, T, C, h, w] predicted latents after each chunk.
        states: float [N, T, S] predicted states after each chunk.
        success_logits: float [N, T] predicted success logit after each chunk.
        alive: bool [N, T] True while the episode had not terminated before chunk t (the chunk counts).
        success: bool [N] whether the episode ended in (predicted) success.
        instructions, task_names: N strings each.
        group_size: G.
    """

    observations: list[Observation]
    samples: list[ActionSample]
    subgoal_images: torch.Tensor
    subgoal_latents: torch.Tensor
    states: torch.Tensor
    success_logits: torch.Tensor
    alive: torch.Tensor
    success: torch.Tensor
    instructions: list[str]
    task_names: list[str]
    group_size: int

    @property
    def num_rows(self) -> int:
        return self.alive.shape[0]

    @property
    def horizon(self) -> int:
        return self.alive.shape[1]

    @property
    def actions(self) -> torch.Tensor:
        """float [N, T, H, A]."""
        return torch.stack([s.actions for s in self.samples], dim=1)

    @property
    def subtasks(self) -> list[list[str]]:
        """N lists of T subtask strings."""
        return [[s.subtask_text[i] for s in self.samples] for i in range(self.num_rows)]

    @property
    def lengths(self) -> torch.Tensor:
        """long [N] number of chunks each episode ran."""
        return self.alive.sum(dim=1)


@dataclass
class RewardOutput:
    """Rewards of every reward function for N rows.

    Attributes:
        per_function: float [N, F] rewards, NaN where a function returned None (row skipped for it).
        names: F reward-function names.
        weights: float [F] weights used to combine them.
    """

    per_function: torch.Tensor
    names: list[str]
    weights: torch.Tensor

    def weighted_sum(self) -> torch.Tensor:
        """float [N]: Σ_f w_f r_f, NaN treated as 0 (skipped rows contribute nothing)."""
        return (torch.nan_to_num(self.per_function, nan=0.0) * self.weights[None, :]).sum(dim=1)
