"""Helpers for reward tests: tiny Trajectories built by hand with known answers (a uniquely named module, not a
conftest, so that it imports the same way whatever other test folders define)."""

from __future__ import annotations

import torch

from wlarl.types import ActionSample, Observation, Trajectories


def make_trajectories(
    n: int = 4,
    t: int = 3,
    group_size: int = 2,
    subtasks: list[list[str]] | None = None,
    success: list[bool] | None = None,
    success_logits: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    start_latents: torch.Tensor | None = None,
    actions: torch.Tensor | None = None,
    alive: torch.Tensor | None = None,
    task_names: list[str] | None = None,
    image_size: int = 8,
) -> Trajectories:
    """N trajectories of T chunks (H=2 actions of A=4, S=4, latents C,h,w = 2,2,2)."""
    h, a = 2, 4
    subtasks = subtasks or [[f"step {j}" for j in range(t)] for _ in range(n)]
    task_names = task_names or ["reach-v3"] * n
    instructions = [f"do {name}" for name in task_names]
    actions = actions if actions is not None else torch.zeros(n, t, h, a)
    samples = []
    for j in range(t):
        texts = [subtasks[i][j] for i in range(n)]
        ids = torch.tensor([[len(s), 7, 0] for s in texts], dtype=torch.long)
        mask = torch.tensor([[True, True, False]] * n)
        samples.append(
            ActionSample(
                actions=actions[:, j],
                log_prob=torch.zeros(n),
                log_prob_terms=torch.zeros(n, h, a),
                subtask_ids=ids,
                subtask_mask=mask,
                subtask_log_probs=torch.zeros(n, 3),
                subtask_text=texts,
            )
        )
    obs0 = Observation(
        images=torch.zeros(n, image_size, image_size, 3, dtype=torch.uint8),
        states=torch.zeros(n, 4),
        instructions=instructions,
        task_names=task_names,
        latents=start_latents,
    )
    return Trajectories(
        observations=[obs0] * t,
        samples=samples,
        subgoal_images=torch.zeros(n, t, image_size, image_size, 3, dtype=torch.uint8),
        subgoal_latents=latents if latents is not None else torch.zeros(n, t, 2, 2, 2),
        states=torch.zeros(n, t, 4),
        success_logits=success_logits if success_logits is not None else torch.zeros(n, t),
        alive=alive if alive is not None else torch.ones(n, t, dtype=torch.bool),
        success=torch.tensor(success if success is not None else [False] * n),
        instructions=instructions,
        task_names=task_names,
        group_size=group_size,
    )
