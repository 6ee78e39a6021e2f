"""A custom reward for wlarl, plugged into GRPO by dotted path.

Use it from the repository root (the folder that holds `examples/`):

    python examples/my_reward.py                      # self-check on a fake batch, prints the rewards
    accelerate launch recipes/grpo_world.py --config debug --output_dir runs/my_reward \\
        --reward_funcs subgoal_success examples.my_reward:stay_in_workspace --reward_weights 1.0 0.5

Three shapes a reward can take, all used the same way:

- `stay_in_workspace`: a plain function of the predicted states.
- `make_height_reward`: a factory (``@reward_factory``) — built once with options from the reward context.
- `judge_subtasks`: an async function (e.g. a call to a remote judge); async rewards run concurrently.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import torch

from rewards import reward_factory

# Meta-World's reachable hand box in metres (x, y, z); states[..., :3] is the predicted hand position.
WORKSPACE_LOW = torch.tensor([-0.5, 0.35, 0.0])
WORKSPACE_HIGH = torch.tensor([0.5, 1.0, 0.35])


def stay_in_workspace(*, states: torch.Tensor, alive: torch.Tensor, **kwargs) -> list[float]:
    """Minus the fraction of executed chunks whose predicted hand left the workspace box.

    Args:
        states: float [N, T, S] predicted robot state after each chunk (hand xyz first).
        alive: bool [N, T] True for chunks the episode ran.
        **kwargs: every other reward argument (images, actions, subtasks, …); unused here.

    Returns:
        N floats in [-1, 0].
    """
    hand = states[..., :3].float().cpu()  # [N, T, 3]
    outside = ((hand < WORKSPACE_LOW) | (hand > WORKSPACE_HIGH)).any(dim=-1)  # [N, T]
    ran = alive.cpu()
    frac = (outside & ran).sum(dim=1) / ran.sum(dim=1).clamp(min=1)  # [N]
    return (-frac).tolist()


@reward_factory
def make_height_reward(min_height: float = 0.05, **unused) -> callable:
    """Factory: `--reward_funcs examples.my_reward:make_height_reward`; options come from the reward context."""

    def hand_above_table(*, states: torch.Tensor, alive: torch.Tensor, **kwargs) -> list[float | None]:
        hand_z = states[..., 2].float().cpu()  # [N, T]
        rows = []
        for z, ran in zip(hand_z, alive.cpu()):
            # None: this row is skipped by this function (left out of its normalisation)
            rows.append(None if not ran.any() else float((z[ran] >= min_height).float().mean()))
        return rows

    return hand_above_table


async def judge_subtasks(*, completions: list[str], instructions: list[str], **kwargs) -> list[float]:
    """An async reward: pretend to ask a remote judge whether the subtask text mentions the instruction's object.

    `completions` are each row's subtasks joined with newlines; `instructions` the task instructions.
    """
    await asyncio.sleep(0.01)  # a network call would go here; async rewards are awaited together
    scores = []
    for text, instruction in zip(completions, instructions):
        words = {w for w in instruction.lower().split() if len(w) > 3}
        scores.append(1.0 if words & set(text.lower().split()) else 0.0)
    return scores


if __name__ == "__main__":
    # Self-check on a fake batch of N=2 rows, T=3 chunks: row 0 stays inside, row 1 leaves the box after chunk 1.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from rewards import RewardScorer, build_reward_scorer

    states = torch.tensor(
        [[[0.0, 0.6, 0.2, 1.0]] * 3, [[0.0, 0.6, 0.2, 1.0], [0.9, 0.6, 0.2, 1.0], [0.9, 0.6, 0.02, 1.0]]]
    )
    batch = dict(
        states=states,  # [N=2, T=3, S=4]
        alive=torch.ones(2, 3, dtype=torch.bool),
        instructions=["push the puck to the goal", "open the drawer"],
        task_names=["push-v3", "drawer-open-v3"],
        subtasks=[["reach the puck", "push the puck to the goal", "push the puck to the goal"], ["reach"] * 3],
    )
    scorer = build_reward_scorer(
        ["examples.my_reward:stay_in_workspace", "examples.my_reward:make_height_reward", judge_subtasks],
        weights=[1.0, 0.5, 0.2],
        min_height=0.05,
    )
    out = scorer.score(**batch)
    print(scorer)
    for name, col in zip(out.names, out.per_function.T.tolist()):
        print(f"reward/{name}: {col}")
    print("weighted sum:", out.weighted_sum().tolist())
    assert torch.allclose(out.per_function[:, 0], torch.tensor([0.0, -2 / 3])) and out.per_function[1, 2] == 0.0
    assert isinstance(scorer, RewardScorer)
    print("ok")
