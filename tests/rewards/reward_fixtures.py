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


def make_episode_dataset(
    n_episodes: int = 24,
    steps: int = 12,
    size: int = 32,
    tasks: tuple[str, ...] = ("push-v3",),
    seed: int = 0,
    shaped_reward: bool = False,
):
    """A synthetic episode dataset (written by `wlarl.data.write_episodes`) whose success is visible only in the
    object.

    Scene: grey background, a green goal patch on the right, a red object and a blue arm. In successful episodes the
    arm pushes the object onto the goal (success once the object is there). In failed episodes the arm goes to the
    same final pose but the object stays where it was: those frames are hard negatives (arm in the success pose).
    Half the episodes succeed. Hand xyz (state[:3]) is the arm's pixel position / 100. With `shaped_reward` the
    ``reward`` of the action at t is a visible progress, 10 · (0.3 · how far the arm has come + 0.7 · how far the
    object has come to the goal), so a failed episode (object still) tops out at 3; otherwise it is 0. Returns the
    in-memory `datasets.Dataset`.
    """
    import shutil
    import tempfile

    import numpy as np
    from datasets import load_from_disk

    from wlarl.data import write_episodes

    rng = np.random.default_rng(seed)
    goal = np.array([0.75, 0.5]) * size

    def episode(ep: int) -> dict:
        task = tasks[ep % len(tasks)]
        ok = ep % 2 == 0
        obj0 = np.array([0.3 + 0.1 * rng.random(), 0.3 + 0.4 * rng.random()]) * size
        arm0 = np.array([0.1, 0.1 + 0.8 * rng.random()]) * size
        images, states, success, reward = [], [], [], []
        for t in range(steps + 1):  # observations 0..T
            frac = min(t / (steps * 0.75), 1.0)
            arm = arm0 + (goal - np.array([size * 0.12, 0]) - arm0) * frac
            obj = obj0 + (goal - obj0) * max(0.0, (frac - 0.4) / 0.6) if ok else obj0
            img = np.full((size, size, 3), 110, dtype=np.uint8)
            g0 = goal.astype(int)
            img[g0[1] - 4 : g0[1] + 4, g0[0] - 4 : g0[0] + 4] = (60, 170, 60)
            o = obj.astype(int)
            img[o[1] - 2 : o[1] + 2, o[0] - 2 : o[0] + 2] = (200, 40, 40)
            a = arm.astype(int)
            img[max(a[1] - 3, 0) : a[1] + 3, max(a[0] - 3, 0) : a[0] + 3] = (40, 40, 200)
            images.append(img)
            states.append([arm[0] / 100, arm[1] / 100, 0.1, 0.0])
            if t > 0:  # success after the action at t-1 = the object is on the goal in observation t
                success.append(bool(np.linalg.norm(obj - goal) < 1.0))
                obj_done = 1.0 - np.linalg.norm(obj - goal) / np.linalg.norm(obj0 - goal)
                reward.append(10.0 * (0.3 * frac + 0.7 * obj_done) if shaped_reward else 0.0)
        return {
            "image": np.stack(images),
            "state": np.asarray(states, dtype=np.float32),
            "full_state": np.zeros((steps + 1, 39), np.float32),
            "action": np.tile(np.array([0.1, 0.0, 0.0, 0.0], np.float32), (steps, 1)),
            "reward": np.asarray(reward, np.float32),
            "success": np.asarray(success),
            "subtask": ["push the puck"] * steps,
            "instruction": f"do {task}",
            "task_name": task,
            "seed": ep,
            "noise_mode": "clean",
        }

    tmp = tempfile.mkdtemp(prefix="wlarl-reward-fixture-")
    try:
        write_episodes((episode(ep) for ep in range(n_episodes)), f"{tmp}/ds", {"image_size": [size, size]})
        return load_from_disk(f"{tmp}/ds", keep_in_memory=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
