"""Subtask-text reward: are the policy's subtasks valid for the task, and in order?

Each task has an ordered list of subtask phases (e.g. push-v3: "reach the puck", "grasp the puck", "push the
puck to the goal"). For the subtasks of the chunks a row ran (alive), chunk t scores 1 when its text is one of the
task's phases *and* its phase index is not below the highest phase seen earlier in the row (going back is out of
order); the reward is the mean over chunks, in [0, 1]. Texts are compared after lower-casing, collapsing spaces and
dropping a trailing period. Rows of a task without rules are skipped (None).

The rule table reaches the reward only through the reward context: ``build_reward_scorer(...,
subtask_rules={task_name: [phase, ...]})`` (the recipe passes `rollout.experts.SUBTASK_RULES`; `rewards/` never
imports `rollout/`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rewards.base import reward_factory


def normalize_subtask(text: str) -> str:
    """Lower-case, collapse whitespace, drop a trailing period."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


class SubtaskTextReward:
    """Fraction of executed chunks whose subtask is a valid phase of the task, in order.

    Args:
        subtask_rules: {task_name: ordered phases} (e.g. `rollout.experts.SUBTASK_RULES`).
    """

    __name__ = "subtask_text"

    def __init__(self, subtask_rules: Mapping[str, Sequence[str]] | None = None) -> None:
        if subtask_rules is None:
            raise ValueError(
                "subtask_text: no rule table; pass subtask_rules={task_name: [phase, ...]} in the reward context, "
                "e.g. build_reward_scorer(..., subtask_rules=rollout.experts.SUBTASK_RULES)"
            )
        if not isinstance(subtask_rules, Mapping):
            raise TypeError(
                f"subtask_text: subtask_rules must map task names to lists of phases, got {type(subtask_rules).__name__}"
            )
        self._table = {str(k): [str(p) for p in v] for k, v in subtask_rules.items()}
        self._cache: dict[str, dict[str, int] | None] = {}

    def phases(self, task_name: str) -> dict[str, int] | None:
        """{normalised phase text: index} for a task, or None when the task has no rules."""
        if task_name not in self._cache:
            phases = self._table.get(task_name)
            self._cache[task_name] = (
                None if phases is None else {normalize_subtask(p): i for i, p in enumerate(phases)}
            )
        return self._cache[task_name]

    def score_row(self, task_name: str, subtasks: Sequence[str]) -> float | None:
        """Score one row's executed subtasks (None when the task has no rules or no chunk ran)."""
        phases = self.phases(task_name)
        if phases is None or len(subtasks) == 0:
            return None
        good, highest = 0, -1
        for text in subtasks:
            idx = phases.get(normalize_subtask(text))
            if idx is not None and idx >= highest:
                good += 1
                highest = idx
        return good / len(subtasks)

    def __call__(
        self,
        *,
        task_names: Sequence[str],
        subtasks: Sequence[Sequence[str]],
        alive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Args: task_names N strings; subtasks N lists of T strings; alive bool [N, T]. Returns N values or None."""
        out = []
        for i, (task, row) in enumerate(zip(task_names, subtasks)):
            if alive is not None:
                row = [s for s, a in zip(row, alive[i].tolist()) if a]
            out.append(self.score_row(task, row))
        return out


@reward_factory
def build_subtask_text_reward(
    subtask_rules: Mapping[str, Sequence[str]] | None = None, **unused: Any
) -> SubtaskTextReward:
    """The `subtask_text` built-in (context option `subtask_rules`)."""
    return SubtaskTextReward(subtask_rules)
