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
