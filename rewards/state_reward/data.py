"""Labelled full states for the state reward model from episode datasets (`wlarl.data.episodes` schema).

An episode of T actions has T+1 observation rows; row t holds observation t and the action taken there, with that
step's shaped ``reward`` and ``success``. The state *after* action t is observation t+1, so observation t+1 is
labelled with row t's ``success`` and ``reward``; observation 0 (before any action) has no label and is left out.
The value target of a labelled observation counts env steps to its episode's first successful observation at or
after it (`steps_to_success`, `value_targets`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rewards.rows import Rows, rows_from_datasets, split_by_episode

REQUIRED_COLUMNS = ("full_state", "reward", "success", "task_name", "episode_index", "step_index")


@dataclass
class StateRows(Rows):
    """Labelled full states (M rows): every observation that follows an action.

    Attributes:
        full_states: float32 [M, F] the state after the action.
        success: bool [M] success of that action's step.
        reward: float32 [M] shaped reward of that step.
        task_names: M task names.
        episode: int64 [M] episode ids, unique across datasets (splits are by episode).
        step: int64 [M] observation index in the episode (≥ 1).
    """

    full_states: np.ndarray
    success: np.ndarray
    reward: np.ndarray
    task_names: list[str]
    episode: np.ndarray
    step: np.ndarray

    def summary(self) -> dict[str, int]:
        return {
            "rows": len(self),
            "positives": int(self.success.sum()),
            "negatives": int((~self.success).sum()),
            "episodes": len(np.unique(self.episode)),
            "tasks": len(set(self.task_names)),
        }


def state_rows(dataset: Any, episode_offset: int = 0) -> StateRows:
    """Labelled full states of one episode dataset.

    Args:
        dataset: a dataset folder (`write_episodes` output), an `EpisodeDataset` or a `datasets.Dataset`.
        episode_offset: added to ``episode_index`` (keeps ids unique when several datasets are combined).

    Returns:
        StateRows with one row per observation after an action.
    """
    if isinstance(dataset, (str, os.PathLike)):
        from wlarl.data import load_episodes

        dataset = load_episodes(Path(dataset))
    name = str(getattr(dataset, "path", None) or "dataset")
    dataset = getattr(dataset, "dataset", dataset)  # EpisodeDataset → datasets.Dataset
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"state reward: {name} lacks column(s) {missing}; expected an episode dataset written by "
            f"wlarl.data.write_episodes with columns {list(REQUIRED_COLUMNS)}"
        )
    table = dataset.select_columns(list(REQUIRED_COLUMNS)).with_format("arrow")[:]  # no images read
    n = table.num_rows
    full = table.column("full_state").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    full = full.astype(np.float32).reshape(n, -1)  # [R, F]
    success = table.column("success").to_numpy(zero_copy_only=False).astype(bool)
    reward = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float32)
    tasks = table.column("task_name").to_pylist()
    episode = table.column("episode_index").to_numpy(zero_copy_only=False).astype(np.int64) + episode_offset
    step = table.column("step_index").to_numpy(zero_copy_only=False).astype(np.int64)
    # Observation at step s is labelled by the row of step s-1 in the same episode (the action that led to it).
    order = np.lexsort((step, episode))  # [R] rows by (episode, step)
    prev, cur = order[:-1], order[1:]
    follows = (episode[prev] == episode[cur]) & (step[cur] == step[prev] + 1)
    prev, cur = prev[follows], cur[follows]
    return StateRows(
        full_states=full[cur],
        success=success[prev],
        reward=reward[prev],
        task_names=[tasks[i] for i in cur],
        episode=episode[cur],
        step=step[cur],
    )


def state_rows_from_datasets(datasets: Any) -> StateRows:
    """`state_rows` of one or more datasets, concatenated, with episode ids kept unique across them."""
    return rows_from_datasets(datasets, state_rows, "state reward", "has no observation that follows an action")


def steps_to_success(rows: StateRows) -> np.ndarray:
    """float64 [M]: env steps from each row's state to the first successful state of its episode at or after it.

    0 for a successful state, ``inf`` when no successful state follows in the episode. Rows label the state after
    each action with that action's ``success`` (see the module docstring), so a row with ``step`` s and ``success``
    True is observation s being successful, and k = s' − s for the first such s' ≥ s.
    """
    if len(rows) == 0:
        return np.zeros(0)
    order = np.lexsort((rows.step, rows.episode))  # [M] by (episode, step)
    step = rows.step[order].astype(np.float64)
    _, ep_rank = np.unique(rows.episode[order], return_inverse=True)  # [M] 0, 1, … per episode, increasing
    # One increasing key over all rows (episode-major); the smallest successful key at or after each row is its
    # episode's next success when it lies in the same episode, else the episode has none left.
    base = step.max() + 1.0
    key = ep_rank * base + step  # [M]
    next_key = np.minimum.accumulate(np.where(rows.success[order], key, np.inf)[::-1])[::-1]  # [M]
    out = np.empty(len(rows))
    out[order] = np.where(next_key < (ep_rank + 1) * base, next_key - key, np.inf)
    return out


def value_targets(rows: StateRows, discount: float) -> np.ndarray:
    """float32 [M]: discount ** `steps_to_success` (1 at a successful state), 0 when no success follows."""
    k = steps_to_success(rows)
    finite = np.isfinite(k)
    return np.where(finite, float(discount) ** np.where(finite, k, 0.0), 0.0).astype(np.float32)


__all__ = ["REQUIRED_COLUMNS", "StateRows", "split_by_episode", "state_rows", "state_rows_from_datasets",
           "steps_to_success", "value_targets"]  # fmt: skip
