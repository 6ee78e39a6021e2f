"""Labelled full states for the state reward model from episode datasets (`wlarl.data.episodes` schema).

An episode of T actions has T+1 observation rows; row t holds observation t and the action taken there, with that
step's shaped ``reward`` and ``success``. The state *after* action t is observation t+1, so observation t+1 is
labelled with row t's ``success`` and ``reward``; observation 0 (before any action) has no label and is left out.
The value target of a labelled observation counts env steps to its episode's first successful observation at or
after it (`steps_to_success`, `value_targets`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_COLUMNS = ("full_state", "reward", "success", "task_name", "episode_index", "step_index")


@dataclass
class StateRows:
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

    def __len__(self) -> int:
        return len(self.success)

    def subset(self, idx: Any) -> StateRows:
        idx = np.asarray(idx)
        return StateRows(
            full_states=self.full_states[idx],
            success=self.success[idx],
            reward=self.reward[idx],
            task_names=[self.task_names[i] for i in idx],
            episode=self.episode[idx],
            step=self.step[idx],
        )

    @staticmethod
    def cat(items: Sequence[StateRows]) -> StateRows:
        return StateRows(
            full_states=np.concatenate([r.full_states for r in items]),
            success=np.concatenate([r.success for r in items]),
            reward=np.concatenate([r.reward for r in items]),
            task_names=[t for r in items for t in r.task_names],
            episode=np.concatenate([r.episode for r in items]),
            step=np.concatenate([r.step for r in items]),
        )

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
    if isinstance(datasets, (str, os.PathLike)) or not isinstance(datasets, Sequence):
        datasets = [datasets]
    if not datasets:
        raise ValueError("state reward: no dataset given")
    parts, offset = [], 0
    for ds in datasets:
        rows = state_rows(ds, offset)
        if len(rows) == 0:
            raise ValueError(f"state reward: {ds} has no observation that follows an action")
        if parts and rows.full_states.shape[1] != parts[0].full_states.shape[1]:
            raise ValueError(
                f"state reward: {ds} has full states of size {rows.full_states.shape[1]}, the first dataset "
                f"{parts[0].full_states.shape[1]}"
            )
        parts.append(rows)
        offset = int(rows.episode.max()) + 1
    return StateRows.cat(parts)


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


def split_by_episode(rows: StateRows, fractions: Sequence[float], seed: int = 0) -> list[StateRows]:
    """Split whole episodes, per task: [rest, split 1, split 2, …] with `fractions` of each task's episodes.

    Deterministic in `seed`; a task's split gets round(fraction · its episodes), and at least one episode stays in
    the rest.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split_by_episode: fractions must be ≥ 0 with a sum below 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    episodes, first = np.unique(rows.episode, return_index=True)
    ep_task = np.array([rows.task_names[i] for i in first])
    part_of = {}  # episode id -> split index (0 = rest)
    for task in sorted(set(ep_task.tolist())):
        ids = rng.permutation(episodes[ep_task == task])
        start = 0
        for k, f in enumerate(fractions, start=1):
            count = min(int(np.floor(f * len(ids) + 0.5)), len(ids) - 1 - start)
            for e in ids[start : start + max(count, 0)]:
                part_of[int(e)] = k
            start += max(count, 0)
    which = np.array([part_of.get(int(e), 0) for e in rows.episode])
    return [rows.subset(np.flatnonzero(which == k)) for k in range(len(fractions) + 1)]
