"""Scripted experts: coverage of all 50 tasks, clean success, noisy failures, subtask labels in phase order."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support import requires_metaworld

from rollout.experts import SUBTASK_RULES, TASK_SUBTASKS, NoiseSpec, ScriptedExpert, run_episode, subtask_phases
from rollout.sims import MT50
from rollout.sims.instructions import INSTRUCTIONS, instruction_for
from rollout.sims.metaworld import INSTRUCTION_CHARSET


def test_all_50_tasks_have_instructions_and_subtask_rules():
    assert sorted(INSTRUCTIONS) == sorted(MT50) == sorted(TASK_SUBTASKS) == sorted(SUBTASK_RULES)
    for task in MT50:
        phrasings = INSTRUCTIONS[task]
        assert len(phrasings) >= 3 and len(set(phrasings)) == len(phrasings), task
        assert all(p[0].isupper() and p.endswith(".") for p in phrasings), task
        assert all(set(p) <= INSTRUCTION_CHARSET for p in phrasings), task  # fits the env's Text space
        assert 1 <= len(subtask_phases(task)) <= 3
    assert subtask_phases("pick-place-v3") == ["reach the puck", "grasp the puck", "move the puck to the goal"]
    assert instruction_for("push-v3", 5) == instruction_for("push-v3", 5)
    with pytest.raises(KeyError, match="known tasks"):
        subtask_phases("fly-v3")


def test_noise_spec_validation():
    with pytest.raises(ValueError, match="noise mode 'wild'.*clean"):
        NoiseSpec("wild")
    with pytest.raises(ValueError, match="segment_len"):
        NoiseSpec("random_segments", segment_len=(10, 5))


def _run(task: str, spec: NoiseSpec | str, seeds, max_steps: int = 100) -> list[dict]:
    from rollout.sims import make_env

    env = make_env(task, render_images=False, max_episode_steps=max_steps)
    expert = ScriptedExpert(task, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        episodes = [run_episode(env, expert, seed=s, steps_after_success=2) for s in seeds]
    env.close()
    return episodes


@pytest.mark.metaworld
@requires_metaworld
@pytest.mark.parametrize("task", ["reach-v3", "button-press-topdown-v3", "drawer-close-v3"])
def test_clean_expert_succeeds_with_ordered_subtasks(task):
    for ep in _run(task, "clean", seeds=range(3)):
        assert ep["success"].any(), f"{task} seed {ep['seed']}"
        assert ep["noise_mode"] == "clean" and len(ep["subtask"]) == len(ep["action"]) + 1
        phases = subtask_phases(task)
        index = [phases.index(s) for s in ep["subtask"]]  # every label is a phase of the task ...
        assert index == sorted(index), f"{task}: phases out of order {ep['subtask']}"  # ... in task order
        assert index[-1] == len(phases) - 1  # the episode ends in the final phase


@pytest.mark.metaworld
@requires_metaworld
def test_noisy_modes_produce_failures_and_are_seeded():
    segments = NoiseSpec("random_segments", segment_prob=0.05, segment_len=(30, 60))
    outcomes = [ep["success"].any() for ep in _run("button-press-topdown-v3", segments, seeds=range(4))]
    assert not all(outcomes), "random_segments should make some episodes fail"
    start = NoiseSpec("perturbed_start", start_steps=(40, 60))
    outcomes = [ep["success"].any() for ep in _run("button-press-topdown-v3", start, seeds=range(4))]
    assert not all(outcomes), "perturbed_start should make some episodes fail"
    a, b = _run("reach-v3", NoiseSpec("gaussian", sigma=0.5), seeds=[7, 7], max_steps=20)
    np.testing.assert_array_equal(a["action"], b["action"])
    clean = _run("reach-v3", "clean", seeds=[7], max_steps=20)[0]
    assert not np.allclose(a["action"], clean["action"])


def test_near_miss_spec_validation():
    spec = NoiseSpec("near_miss", stop_before=(2, 5), hold_steps=4)
    assert spec.stop_before == (2, 5) and spec.hold_steps == 4 and not spec.ensure_miss
    with pytest.raises(ValueError, match=r"stop_before=\(0, 3\).*1 <= min <= max"):
        NoiseSpec("near_miss", stop_before=(0, 3))  # d = 0 would take the step that succeeds
    with pytest.raises(ValueError, match="stop_before"):
        NoiseSpec("near_miss", stop_before=(6, 2))
    with pytest.raises(ValueError, match="hold_steps=0"):
        NoiseSpec("near_miss", hold_steps=0)


@pytest.mark.metaworld
@requires_metaworld
@pytest.mark.parametrize("task", ["reach-v3", "drawer-close-v3"])
def test_near_miss_stops_unsolved_next_to_the_success_pose(task):
    """The clean prefix is the clean run's, the hold ends the episode unsolved with the hand where the clean run's
    hand was at its first success (drawer-close needs `ensure_miss`: the drawer slides shut from 8 steps out)."""
    from rollout.sims import make_env

    spec = NoiseSpec("near_miss", stop_before=(1, 4), hold_steps=6, ensure_miss=True)
    env = make_env(task, render_images=False, max_episode_steps=100)
    expert = ScriptedExpert(task, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (0, 1):
            clean = run_episode(env, ScriptedExpert(task, "clean"), seed=seed, steps_after_success=0)
            assert clean["success"][-1] and not clean["success"][:-1].any()  # ends at its first success t*
            ep = run_episode(env, expert, seed=seed)
            t_star, stop = len(clean["action"]), expert.stop_step
            assert ep["noise_mode"] == "near_miss" and stop is not None and stop < t_star
            assert len(ep["action"]) == stop + spec.hold_steps and not ep["success"].any()
            np.testing.assert_array_equal(ep["full_state"][: stop + 1], clean["full_state"][: stop + 1])
            np.testing.assert_array_equal(ep["action"][stop:, :3], 0.0)  # the hold: no arm motion, gripper kept
            np.testing.assert_array_equal(ep["action"][stop:, 3], ep["action"][max(stop - 1, 0), 3])
            hand_gap = np.linalg.norm(ep["state"][-spec.hold_steps :, :3] - clean["state"][-1, :3], axis=1)
            assert hand_gap.max() < 0.05, f"{task} seed {seed}: hand {hand_gap.max():.3f} m from the success pose"
    env.close()


@pytest.mark.metaworld
@requires_metaworld
def test_near_miss_without_a_clean_success_is_a_clean_episode():
    from rollout.sims import make_env

    env = make_env("reach-v3", render_images=False, max_episode_steps=10)  # too short for the expert to succeed
    expert = ScriptedExpert("reach-v3", "near_miss")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = run_episode(env, expert, seed=3)
        clean = run_episode(env, ScriptedExpert("reach-v3", "clean"), seed=3)
    env.close()
    assert expert.stop_step is None and ep["noise_mode"] == "near_miss"
    np.testing.assert_array_equal(ep["action"], clean["action"])
