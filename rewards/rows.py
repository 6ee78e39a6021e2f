"""Row tables of the small reward-side models (state reward rows, dynamics chunk pairs): one row per sample, with
its ``episode`` id and ``task_names``, read from one or more episode datasets and split by whole episodes.

Numpy only, so that the models' training code shares it without importing anything heavy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

R = TypeVar("R", bound="Rows")


class Rows:
    """Mixin for a dataclass whose fields are arrays with one row per sample (first axis) or lists of per-row
    values; it needs an ``episode`` array and a ``task_names`` list."""

    episode: np.ndarray
    task_names: list[str]

    def __len__(self) -> int:
        return len(self.episode)

    def subset(self: R, idx: Any) -> R:
        """The rows `idx` (an index array), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        parts = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            parts[f.name] = [value[i] for i in idx] if isinstance(value, list) else value[idx]
        return type(self)(**parts)

    @classmethod
    def cat(cls: type[R], items: Sequence[R]) -> R:
        """The rows of `items`, one after the other."""
        parts = {}
        for f in dataclasses.fields(cls):
            values = [getattr(r, f.name) for r in items]
            parts[f.name] = [v for vs in values for v in vs] if isinstance(values[0], list) else np.concatenate(values)
        return cls(**parts)


def rows_from_datasets(
    datasets: Any, read: Callable[[Any, int], R], what: str, empty: str, same_width: Sequence[str] = ("full_states",)
) -> R:
    """``read(dataset, episode_offset)`` of one or more datasets, concatenated, with episode ids kept unique.

    Args:
        datasets: a dataset (path or loaded) or a sequence of them.
        read: builds the rows of one dataset, its episode ids starting at the offset.
        what: the model's name in messages.
        empty: why a dataset gave no row (appended to its name in the error).
        same_width: fields whose per-row size must agree across datasets (named in the error otherwise).
    """
    if isinstance(datasets, (str, os.PathLike)) or not isinstance(datasets, Sequence):
        datasets = [datasets]
    if not datasets:
        raise ValueError(f"{what}: no dataset given")
    parts: list[R] = []
    offset = 0
    for ds in datasets:
        rows = read(ds, offset)
        if len(rows) == 0:
            raise ValueError(f"{what}: {ds} {empty}")
        for name in same_width if parts else ():
            got, first = getattr(rows, name).shape[1:], getattr(parts[0], name).shape[1:]
            if got != first:
                raise ValueError(f"{what}: {ds} has {name} of size {got}, the first dataset {first}")
        parts.append(rows)
        offset = int(rows.episode.max()) + 1
    return type(parts[0]).cat(parts)


def split_by_episode(rows: R, fractions: Sequence[float], seed: int = 0) -> list[R]:
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
