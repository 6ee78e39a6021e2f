"""Subgoal rewards: a learned success classifier scores the (predicted) subgoal images.

`SubgoalSuccessReward` (`subgoal_success`) scores the predicted subgoal images of a batch with a trained, calibrated
`rewards.success_classifier.SuccessClassifier`: per-chunk success probability [N, T] and a per-row value.
`SubgoalProgressReward` (`subgoal_progress`) reads a classifier trained with a progress head: 1.0 where the frame is
classified solved, else ``failure_scale`` · predicted progress, so every predicted success outranks every failure and
failures are ordered by how close they came (the image counterpart of `state_progress`). The classifier itself
(model, labels and hard negatives, calibration, training) lives in `rewards.success_classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.base import last_alive_index, reward_factory
from rewards.success_classifier.model import SuccessClassifier, load_success_classifier


class SubgoalSuccessReward:
    """Success classifier as a reward on predicted subgoal images.

    Args:
        model: a trained `SuccessClassifier` (calibrated).
        mode: per-row value — "final" (probability after the last chunk run), "max" (largest over the chunks run)
            or "success" (1.0 when any chunk run reaches the calibrated threshold, else 0.0).
        batch_size: frames per classifier forward.
    """

    __name__ = "subgoal_success"

    def __init__(self, model: SuccessClassifier, mode: str = "final", batch_size: int = 512) -> None:
        if mode not in ("final", "max", "success"):
            raise ValueError(f"subgoal_success: mode must be 'final', 'max' or 'success', got {mode!r}")
        self.model = model.eval()
        self.mode = mode
        self.batch_size = batch_size

    @property
    def threshold(self) -> float:
        return self.model.config.threshold

    def chunk_probs(self, subgoal_images: torch.Tensor, task_names: Sequence[str]) -> torch.Tensor:
        """Per-chunk success probability.

        Args:
            subgoal_images: uint8 [N, T, H, W, 3].
            task_names: N task names.

        Returns:
            float [N, T] calibrated probabilities.
        """
        n, t = subgoal_images.shape[:2]
        flat = subgoal_images.reshape(n * t, *subgoal_images.shape[2:])  # [N*T, H, W, 3]
        tasks = [name for name in task_names for _ in range(t)]
        return self.model.predict_proba(flat, tasks, self.batch_size).reshape(n, t)  # [N, T]

    def trajectory_success(
        self, subgoal_images: torch.Tensor, task_names: Sequence[str], alive: torch.Tensor | None = None
    ) -> torch.Tensor:
        """bool [N]: some chunk that ran reached the calibrated threshold."""
        probs = self.chunk_probs(subgoal_images, task_names)
        if alive is not None:
            probs = probs * alive.bool().cpu()
        return (probs >= self.threshold).any(dim=1)

    def frame_values(self, images: torch.Tensor, task_names: Sequence[str]) -> torch.Tensor:
        """float [M] per-frame values of frames uint8 [M, H, W, 3]: the calibrated success probability."""
        return self.model.predict_proba(images, list(task_names), self.batch_size)

    def __call__(
        self,
        *,
        subgoal_images: torch.Tensor,
        task_names: Sequence[str],
        alive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Args: subgoal_images uint8 [N, T, H, W, 3]; task_names N; alive bool [N, T]. Returns N floats in [0, 1]."""
        n, t = subgoal_images.shape[:2]
        if len(task_names) != n:
            raise ValueError(f"{self.__name__}: {n} rows of subgoal_images but {len(task_names)} task names")
        alive = torch.ones(n, t, dtype=torch.bool) if alive is None else torch.as_tensor(alive).bool().cpu()
        if self.mode == "final":  # only the last frame each row ran: T times cheaper than every chunk
            last = last_alive_index(alive).to(subgoal_images.device)
            final = subgoal_images[torch.arange(n, device=subgoal_images.device), last]  # [N, H, W, 3]
            return self.frame_values(final, task_names).tolist()
        flat = subgoal_images.reshape(n * t, *subgoal_images.shape[2:])  # [N*T, H, W, 3]
        values = self.frame_values(flat, [name for name in task_names for _ in range(t)]).reshape(n, t)
        ran = alive.clone()
        ran[~alive.any(dim=1), 0] = True  # a row that ran no chunk is scored at chunk 0, as last_alive_index does
        if self.mode == "max":
            return values.masked_fill(~ran, float("-inf")).amax(dim=1).tolist()
        return ((values >= self.threshold) & ran).any(dim=1).float().tolist()


class SubgoalProgressReward(SubgoalSuccessReward):
    """Success or dense progress from one classifier with a progress head.

    Args:
        model: a trained `SuccessClassifier` with ``progress_head`` (calibrated).
        mode: "final" (the last chunk each row ran) or "max" (the best chunk it ran).
        failure_scale: in [0, 1); the most a frame not classified solved can score.
        batch_size: frames per classifier forward.
    """

    __name__ = "subgoal_progress"

    def __init__(
        self, model: SuccessClassifier, mode: str = "final", failure_scale: float = 0.9, batch_size: int = 512
    ) -> None:
        if mode not in ("final", "max"):
            raise ValueError(f"subgoal_progress: mode must be 'final' or 'max', got {mode!r}")
        if not 0.0 <= failure_scale < 1.0:
            raise ValueError(
                f"subgoal_progress: failure_scale must be in [0, 1) so that a success outranks every failure, got "
                f"{failure_scale}"
            )
        model.require_progress_head("subgoal_progress")
        super().__init__(model, mode="final", batch_size=batch_size)
        self.mode, self.failure_scale = mode, float(failure_scale)

    def frame_values(self, images: torch.Tensor, task_names: Sequence[str]) -> torch.Tensor:
        """float [M] values of frames uint8 [M, H, W, 3]: 1.0 when solved, else failure_scale · progress."""
        probs, progress = self.model.predict_proba_and_progress(images, list(task_names), self.batch_size)
        return torch.where(probs >= self.threshold, torch.ones_like(progress), self.failure_scale * progress)


@reward_factory
def build_subgoal_success_reward(
    reward_model_path: str,
    success_reward_mode: str = "final",
    device: str | torch.device | None = None,
    **unused: Any,
) -> SubgoalSuccessReward:
    """The `subgoal_success` built-in: context `reward_model_path` (a train_reward output_dir or a saved model)."""
    return SubgoalSuccessReward(load_success_classifier(reward_model_path, device), mode=success_reward_mode)


@reward_factory
def build_subgoal_progress_reward(
    reward_model_path: str,
    success_reward_mode: str = "final",
    failure_scale: float = 0.9,
    device: str | torch.device | None = None,
    **unused: Any,
) -> SubgoalProgressReward:
    """The `subgoal_progress` built-in: context `reward_model_path` (a classifier trained with ``--progress_head
    true``); options `success_reward_mode` ("final" or "max") and `failure_scale`."""
    return SubgoalProgressReward(
        load_success_classifier(reward_model_path, device), success_reward_mode, failure_scale
    )
