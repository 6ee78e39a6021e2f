"""Subtask-text reward: are the policy's subtasks valid for the task, and in order?

Each task has an ordered list of subtask phases (e.g. push-v3: "reach the puck", "grasp the puck", "push the
puck to the goal"). For the subtasks of the chunks a row ran (alive), chunk t scores 1 when its text is one of the
task's phases *and* its phase index is not below the highest phase seen earlier in the row (going back is out of
order); the reward is the mean over chunks, in [0, 1]. Texts are compared after lower-casing, collapsing spaces and
dropping a trailing period. Rows of a task without rules are skipped (None).

The rule table comes from the caller (`subtask_rules={task: [phase, ...]}`), else from `rollout.experts` when it
exposes `SUBTASK_RULES` (a mapping) or `subtask_phases(task_name) -> list[str]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from rewards.base import reward_factory


def normalize_subtask(text: str) -> str:
    """Lower-case, collapse whitespace, drop a trailing period."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


def _rules_from_rollout() -> Callable[[str], Sequence[str] | None] | None:
    try:
        from rollout import experts  # noqa: PLC0415 - optional source of the rule table
    except ImportError:
        return None
    table = getattr(experts, "SUBTASK_RULES", None)
    if isinstance(table, Mapping):
        return lambda task: table.get(task)
    fn = getattr(experts, "subtask_phases", None)
    if callable(fn):

        def lookup(task: str) -> Sequence[str] | None:
            try:
                return fn(task)
            except (KeyError, ValueError):
                return None

        return lookup
    return None


class SubtaskTextReward:
    """Fraction of executed chunks whose subtask is a valid phase of the task, in order.

    Args:
        subtask_rules: {task_name: ordered phases}; when None, read from `rollout.experts`.
    """

    __name__ = "subtask_text"

    def __init__(self, subtask_rules: Mapping[str, Sequence[str]] | None = None) -> None:
        if subtask_rules is not None:
            table = {k: list(v) for k, v in subtask_rules.items()}
            self._lookup: Callable[[str], Sequence[str] | None] = table.get
        else:
            lookup = _rules_from_rollout()
            if lookup is None:
                raise ValueError(
                    "subtask_text: no rule table; pass subtask_rules={task_name: [phase, ...]} in the reward context "
                    "(rollout.experts exposes neither SUBTASK_RULES nor subtask_phases)"
                )
            self._lookup = lookup
        self._cache: dict[str, dict[str, int] | None] = {}

    def phases(self, task_name: str) -> dict[str, int] | None:
        """{normalised phase text: index} for a task, or None when the task has no rules."""
        if task_name not in self._cache:
            phases = self._lookup(task_name)
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
