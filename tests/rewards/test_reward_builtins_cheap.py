"""Built-ins that need no model, each on a fixture with a known answer: shaping, subtask_text, progress."""

from __future__ import annotations

import pytest
import torch
from reward_fixtures import make_trajectories

from rewards import RewardScorer, build_reward_scorer, resolve_reward_func, trajectory_reward_kwargs
from rewards.progress import ProgressReward
from rewards.shaping import ShapingReward
from rewards.subtask_text import SubtaskTextReward, normalize_subtask

RULES = {"push-v3": ["reach the puck", "grasp the puck", "push the puck to the goal"]}


# ---------------------------------------------------------------- shaping


def test_shaping_zero_for_constant_in_bounds_actions():
    actions = torch.full((2, 3, 2, 4), 0.3)
    assert ShapingReward()(actions=actions) == pytest.approx([0.0, 0.0])


def test_shaping_known_penalties():
    actions = torch.zeros(2, 1, 2, 4)
    actions[0, 0, 1, 0] = 1.0  # one jump of size 1 between the two actions: smoothness 1, in bounds
    actions[1, :, :, 0] = 1.5  # constant, 0.5 over the bound on one dim: bound penalty 0.25
    out = ShapingReward(smoothness_weight=2.0, bound_weight=4.0)(actions=actions)
    assert out == pytest.approx([-2.0, -1.0])


def test_shaping_ignores_chunks_that_did_not_run():
    actions = torch.zeros(1, 2, 2, 4)
    actions[0, 1] = 5.0  # after termination: ignored
    alive = torch.tensor([[True, False]])
    assert ShapingReward()(actions=actions, alive=alive) == pytest.approx([0.0])


def test_shaping_by_name_with_options():
    traj = make_trajectories(actions=torch.full((4, 3, 2, 4), 2.0))
    out = build_reward_scorer(["shaping"], action_low=-3.0, action_high=3.0)(traj)
    assert out.per_function[:, 0].tolist() == [0.0] * 4
    out = RewardScorer(["shaping"])(traj)  # default bounds [-1, 1]: excess 1 on 4 dims
    assert out.per_function[:, 0].tolist() == [-4.0] * 4


def test_shaping_scores_the_means_not_the_noise():
    # two rows with the same greedy means; row 1 was sampled with much more noise (a larger std)
    means = torch.linspace(-0.5, 0.5, 3 * 2 * 4).reshape(1, 3, 2, 4).repeat(2, 1, 1, 1)  # [N=2, T, H, A]
    noise = (
        torch.randn(2, 3, 2, 4, generator=torch.Generator().manual_seed(0))
        * torch.tensor([0.05, 0.8])[:, None, None, None]
    )
    executed = (means + noise).clamp(-1, 1)
    out = ShapingReward()(actions=executed, action_means=means)
    assert out[0] == pytest.approx(out[1]) and out[0] == pytest.approx(ShapingReward()(actions=means)[0])
    # without means (flow heads) the executed actions are scored
    assert ShapingReward()(actions=executed) != pytest.approx(out)


def test_shaping_no_bound_penalty_for_a_mean_at_the_bound():
    means = torch.zeros(2, 2, 2, 4)
    means[0, ..., 0], means[1, ..., 1] = 1.0, -1.0  # saturated at exactly +1 / -1, constant
    sampled = means + torch.randn(2, 2, 2, 4, generator=torch.Generator().manual_seed(1)) * 0.4  # draws beyond ±1
    assert ShapingReward(smoothness_weight=0.0)(actions=sampled, action_means=means) == [0.0, 0.0]
    assert ShapingReward()(actions=sampled.clamp(-1, 1), action_means=means) == [0.0, 0.0]


def test_shaping_reads_action_means_from_trajectories():
    means = torch.zeros(4, 3, 2, 4)
    means[:, 1] = 0.5  # one step change between chunks 0 and 1, and back between 1 and 2
    traj = make_trajectories(actions=means + torch.randn(4, 3, 2, 4, generator=torch.Generator().manual_seed(2)))
    for t, sample in enumerate(traj.samples):
        sample.extras["mean"] = means[:, t]
    if not hasattr(traj, "action_means"):
        pytest.skip("Trajectories has no action_means yet")
    assert torch.equal(trajectory_reward_kwargs(traj)["action_means"], means)
    out = build_reward_scorer(["shaping"])(traj).per_function[:, 0]
    # jerk 4 · 0.25 = 1 at two of the 5 consecutive pairs of executed actions
    assert out.tolist() == pytest.approx([-2 / 5] * 4)


# ---------------------------------------------------------------- subtask_text


def test_normalize_subtask():
    assert normalize_subtask("  Reach   the Puck. ") == "reach the puck"


@pytest.mark.parametrize(
    "row, expected",
    [
        (["reach the puck", "grasp the puck", "push the puck to the goal"], 1.0),
        (["reach the puck", "reach the puck", "Grasp the puck."], 1.0),
        (["reach the puck", "open the drawer", "grasp the puck", "push the puck to the goal"], 0.75),
        (["grasp the puck", "reach the puck", "grasp the puck", "push the puck to the goal"], 0.75),
        (["sing a song"], 0.0),
    ],
)
def test_subtask_text_known_answers(row, expected):
    assert SubtaskTextReward(RULES).score_row("push-v3", row) == pytest.approx(expected)


def test_subtask_text_skips_unknown_task_and_uses_alive():
    fn = resolve_reward_func("subtask_text", subtask_rules=RULES)
    alive = torch.tensor([[True, True, False], [True, True, True]])
    out = fn(
        task_names=["push-v3", "reach-v3"],
        subtasks=[["reach the puck", "grasp the puck", "dance"], ["a", "b", "c"]],
        alive=alive,
    )
    assert out == [1.0, None]


def test_subtask_text_through_scorer():
    subtasks = [
        ["reach the puck", "grasp the puck", "push the puck to the goal"],
        ["push the puck to the goal", "reach the puck", "x"],
    ]
    traj = make_trajectories(n=2, t=3, group_size=2, subtasks=subtasks, task_names=["push-v3"] * 2)
    out = build_reward_scorer(["subtask_text"], subtask_rules=RULES)(traj)
    assert out.per_function[:, 0].tolist() == pytest.approx([1.0, 1 / 3])


# ---------------------------------------------------------------- progress


def _progress_fixture():
    """One group of 4: a success at latent 1, failures ending at 0.5 (halfway), 0 (start) and beyond the start."""
    n, t = 4, 2
    latents = torch.zeros(n, t, 2, 2, 2)
    latents[0, -1] = 1.0  # success ends at the goal
    latents[1, -1] = 0.5  # halfway
    latents[2, -1] = 0.0  # back at the start
    latents[3, -1] = -1.0  # further away than the start
    start = torch.zeros(n, 2, 2, 2)
    return latents, start


def test_progress_known_answer_with_start_latents():
    latents, start = _progress_fixture()
    traj = make_trajectories(
        n=4, t=2, group_size=4, latents=latents, start_latents=start, success=[True, False, False, False]
    )
    out = RewardScorer([ProgressReward(failure_scale=0.5)])(traj)
    assert out.per_function[:, 0].tolist() == pytest.approx([1.0, 0.25, 0.0, 0.0])


def test_progress_without_start_latents_normalises_by_farthest_failure():
    latents, _ = _progress_fixture()
    kw = dict(subgoal_latents=latents, alive=torch.ones(4, 2, dtype=torch.bool), group_size=4, task_names=["t"] * 4)
    out = ProgressReward(failure_scale=0.8)(success=torch.tensor([True, False, False, False]), **kw)
    # distances to the success: 0.5*sqrt(8), sqrt(8), 2*sqrt(8) -> 1 - d/max = 0.75, 0.5, 0
    assert out == pytest.approx([1.0, 0.6, 0.4, 0.0])


def test_progress_borrows_successes_of_same_task_and_zero_without_any():
    latents = torch.zeros(4, 1, 2, 2, 2)
    latents[0, 0] = 1.0
    latents[1, 0] = 0.5
    kw = dict(subgoal_latents=latents, alive=torch.ones(4, 1, dtype=torch.bool), group_size=2)
    start = torch.zeros(4, 2, 2, 2)
    out = ProgressReward(0.5)(
        success=torch.tensor([True, False, False, False]),
        task_names=["a", "a", "b", "b"],
        start_latents=start,
        **kw,
    )
    assert out == pytest.approx([1.0, 0.25, 0.0, 0.0])
    # group 2 (task a) has no success and borrows group 1's
    out = ProgressReward(0.5)(
        success=torch.tensor([True, False, False, False]),
        task_names=["a", "a", "a", "a"],
        start_latents=start,
        subgoal_latents=torch.cat([latents[:2], latents[:2]]).clone().index_fill_(0, torch.tensor([2]), 0.5),
        alive=kw["alive"],
        group_size=2,
    )
    assert out == pytest.approx([1.0, 0.25, 0.25, 0.25])


def test_progress_success_from_logits_and_validation():
    latents, start = _progress_fixture()
    logits = torch.tensor([[0.0, 5.0], [0.0, -5.0], [0.0, -5.0], [0.0, -5.0]])
    out = ProgressReward(0.5, success_key="success_logits")(
        subgoal_latents=latents,
        alive=torch.ones(4, 2, dtype=torch.bool),
        group_size=4,
        task_names=["t"] * 4,
        success_logits=logits,
        start_latents=start,
    )
    assert out == pytest.approx([1.0, 0.25, 0.0, 0.0])
    with pytest.raises(ValueError, match="failure_scale"):
        ProgressReward(1.0)


def test_subtask_text_needs_rules_from_the_context():
    with pytest.raises(ValueError, match=r"subtask_rules=.*rollout\.experts\.SUBTASK_RULES"):
        resolve_reward_func("subtask_text")  # rewards/ never reads the table from rollout/ itself
    from rollout.experts import SUBTASK_RULES  # what the recipe passes

    fn = build_reward_scorer(["subtask_text"], subtask_rules=SUBTASK_RULES).funcs[0]
    task = sorted(SUBTASK_RULES)[0]
    assert fn(task_names=[task, "not-a-task-v3"], subtasks=[list(SUBTASK_RULES[task]), ["x"]]) == [1.0, None]
