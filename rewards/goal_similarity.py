"""Goal-similarity reward: the predicted subgoal compared with goal images of successful episodes of the task.

The comparison happens in the image tokenizer's latent space (`policy.encode_images`), so no pixels are decoded.
For each task we keep K goal latents g_k (the first frame showing success in each successful episode) and a centre
c (the mean latent of the task's frames): every latent shares the static background, and subtracting c makes the
similarity measure what changed in the scene. The reward of row n (task τ, latent z after the last chunk it ran) is

    cosine:  max_k cos(z - c_τ, g_k - c_τ)                  in [-1, 1]
    l2:      -min_k ||z - g_k|| / sqrt(D)                    ≤ 0 (D = C·h·w)

Goal latents come from an episode dataset and the policy (`dataset_path` + `policy` in the reward context), or are
given directly (`goal_latents={task: [K, C, h, w]}`, optionally `goal_centers={task: [C, h, w]}`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rewards.base import last_alive_index, reward_factory
from rewards.success_classifier.labels import frame_labels


class GoalSimilarityReward:
    """Similarity of the final predicted latent to the task's goal latents.

    Args:
        goal_latents: {task_name: float [K, C, h, w]}.
        goal_centers: {task_name: float [C, h, w]} subtracted before the cosine (default: zeros).
        encoder: images uint8 [N, H, W, 3] → latents [N, C, h, w], used when `subgoal_latents` is not given.
        metric: "cosine" or "l2".
    """

    __name__ = "goal_similarity"

    def __init__(
        self,
        goal_latents: Mapping[str, torch.Tensor],
        goal_centers: Mapping[str, torch.Tensor] | None = None,
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        metric: str = "cosine",
    ) -> None:
        if metric not in ("cosine", "l2"):
            raise ValueError(f"goal_similarity: metric must be 'cosine' or 'l2', got {metric!r}")
        if not goal_latents:
            raise ValueError("goal_similarity: no goal latents (no successful episodes in the dataset?)")
        self.goals = {k: torch.as_tensor(v).float().flatten(1) for k, v in goal_latents.items()}  # {task: [K, D]}
        for task, g in self.goals.items():
            if g.shape[0] == 0:
                raise ValueError(f"goal_similarity: task {task!r} has no goal latents")
        centers = goal_centers or {}
        self.centers = {
            k: torch.as_tensor(centers[k]).float().flatten() if k in centers else torch.zeros(g.shape[1])
            for k, g in self.goals.items()
        }  # {task: [D]}
        self.encoder = encoder
        self.metric = metric

    def __call__(
        self,
        *,
        task_names: Sequence[str],
        subgoal_latents: torch.Tensor | None = None,
        subgoal_images: torch.Tensor | None = None,
        alive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Args: subgoal_latents [N, T, C, h, w] (or subgoal_images uint8 [N, T, H, W, 3] with an encoder);
        alive bool [N, T]; task_names N. Returns N similarities."""
        if subgoal_latents is None:
            if subgoal_images is None or self.encoder is None:
                raise ValueError("goal_similarity: needs subgoal_latents, or subgoal_images and an encoder (policy)")
            n, t = subgoal_images.shape[:2]
            last = self._last(alive, n, t)
            with torch.no_grad():
                z = self.encoder(subgoal_images[torch.arange(n), last]).float()  # [N, C, h, w]
        else:
            n, t = subgoal_latents.shape[:2]
            last = self._last(alive, n, t).to(subgoal_latents.device)
            z = subgoal_latents[torch.arange(n, device=subgoal_latents.device), last].float()  # [N, C, h, w]
        z = z.reshape(n, -1).cpu()  # [N, D]
        out = []
        for i, task in enumerate(task_names):
            if task not in self.goals:
                raise KeyError(f"goal_similarity: no goal latents for task {task!r}; have {sorted(self.goals)}")
            g = self.goals[task]  # [K, D]
            if g.shape[1] != z.shape[1]:
                raise ValueError(f"goal_similarity: latent size {z.shape[1]} differs from the goals' {g.shape[1]}")
            if self.metric == "cosine":
                c = self.centers[task]
                out.append(F.cosine_similarity((z[i] - c)[None], g - c[None], dim=1, eps=1e-8).max().item())
            else:
                out.append(-(torch.cdist(z[i][None], g)[0].min() / g.shape[1] ** 0.5).item())
        return out

    @staticmethod
    def _last(alive: torch.Tensor | None, n: int, t: int) -> torch.Tensor:
        if alive is None:
            return torch.full((n,), t - 1, dtype=torch.long)
        return last_alive_index(torch.as_tensor(alive)).cpu()


def goal_latents_from_dataset(
    dataset: Any,
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    max_goals_per_task: int = 64,
    max_center_frames: int = 256,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Goal latents (first success frame of each successful episode) and centres (mean latent of the task's frames).

    Args:
        dataset: episode dataset (Dataset, path saved with `save_to_disk`, or EpisodeDataset).
        encode_images: uint8 [N, H, W, 3] → float [N, C, h, w] (e.g. `policy.encode_images`).

    Returns:
        ({task: [K, C, h, w]}, {task: [C, h, w]}).
    """
    if isinstance(dataset, (str, Path)):
        from datasets import load_from_disk

        dataset = load_from_disk(str(dataset))
    dataset = getattr(dataset, "dataset", dataset)
    cols = dataset.with_format("numpy")
    success = np.asarray(cols["success"], dtype=bool)
    episode = np.asarray(cols["episode_index"], dtype=np.int64)
    step = np.asarray(cols["step_index"], dtype=np.int64)
    tasks = np.asarray([str(t) for t in dataset["task_name"]])
    labels = frame_labels(success, episode, step)
    rng = np.random.default_rng(seed)

    def encode(rows: np.ndarray) -> torch.Tensor:
        out = []
        for b in range(0, len(rows), batch_size):
            imgs = torch.from_numpy(np.asarray(cols[rows[b : b + batch_size].tolist()]["image"], dtype=np.uint8))
            with torch.no_grad():
                out.append(encode_images(imgs).float().cpu())
        return torch.cat(out)

    goals, centers = {}, {}
    for task in np.unique(tasks):
        in_task = tasks == task
        first = []
        for ep in np.unique(episode[in_task & labels]):
            rows = np.flatnonzero((episode == ep) & labels)
            first.append(rows[np.argmin(step[rows])])
        if not first:
            continue
        first = np.array(first)
        if len(first) > max_goals_per_task:
            first = rng.choice(first, max_goals_per_task, replace=False)
        all_rows = np.flatnonzero(in_task)
        if len(all_rows) > max_center_frames:
            all_rows = rng.choice(all_rows, max_center_frames, replace=False)
        goals[str(task)] = encode(np.sort(first))
        centers[str(task)] = encode(np.sort(all_rows)).mean(dim=0)
    if not goals:
        raise ValueError("goal_similarity: the dataset has no successful episode; collect some first")
    return goals, centers


@reward_factory
def build_goal_similarity_reward(
    policy: Any = None,
    dataset_path: str | None = None,
    goal_latents: Mapping[str, torch.Tensor] | None = None,
    goal_centers: Mapping[str, torch.Tensor] | None = None,
    goal_metric: str = "cosine",
    max_goals_per_task: int = 64,
    **unused: Any,
) -> GoalSimilarityReward:
    """The `goal_similarity` built-in: context `goal_latents`, or `dataset_path` + `policy` (with `encode_images`)."""
    encoder = getattr(policy, "encode_images", None) if policy is not None else None
    if goal_latents is None:
        if not dataset_path or encoder is None:
            raise ValueError(
                "goal_similarity needs goal latents: pass dataset_path (episodes with successes) and policy (for "
                "policy.encode_images) in the reward context, or goal_latents={task: [K, C, h, w]}"
            )
        goal_latents, goal_centers = goal_latents_from_dataset(dataset_path, encoder, max_goals_per_task)
    return GoalSimilarityReward(goal_latents, goal_centers, encoder, goal_metric)
