"""Start states inside recorded episodes: the branch points GRPO imagines from.

`start_states` (in `wlarl.data.episodes`) gives the first frame of every episode; `keyframe_states` gives frames
every `stride` steps inside them. Each start carries task, seed, step and episode index, so that it can be rebuilt
in the real simulator (reset with the seed, replay the recorded actions up to the step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wlarl.data.episodes import EpisodeDataset, _read, frame_states


def keyframe_states(ep_ds: EpisodeDataset, stride: int) -> list[dict[str, Any]]:
    """Observations at steps 0, stride, 2·stride, … of every episode, up to its last action.

    The final observation of an episode (its `is_last` row) is never a start: no recorded action follows it. Nor is
    a frame after the episode's first success: imagination from it would only re-count a success already reached.

    Args:
        ep_ds: an `EpisodeDataset`.
        stride: steps between keyframes (≥ 1; 1 gives every frame).

    Returns:
        dicts with `image` uint8 [H, W, 3], `state` float32 [S], `full_state` float32 [F], `instruction`,
        `task_name`, `seed`, `step_index` and `episode_index`, ordered by episode then step.
    """
    if stride < 1:
        raise ValueError(f"keyframe_states: stride must be ≥ 1, got {stride}")
    arrow = ep_ds.dataset.with_format("arrow")
    cols = _read(arrow, slice(0, len(arrow)), ("step_index", "is_last", "success"))
    step, is_last, success = cols["step_index"], cols["is_last"].astype(bool), cols["success"].astype(bool)
    # solved[r]: an earlier step of row r's episode succeeded (the success of row r-1 is that of row r's frame).
    solved = np.zeros(len(step), dtype=bool)
    for s, e in ep_ds.episode_ranges:
        solved[s + 1 : e] = np.cumsum(success[s : e - 1]) > 0
    rows = np.flatnonzero((step % stride == 0) & ~is_last & ~solved).tolist()
    return frame_states(ep_ds, rows)


def task_outcomes(ep_ds: EpisodeDataset) -> dict[str, tuple[int, int]]:
    """Per task, ``(successful episodes, episodes)``: an episode succeeded when any of its steps did.

    Reads only the `task_name` and `success` columns (no images).
    """
    arrow = ep_ds.dataset.with_format("arrow")
    cols = _read(arrow, slice(0, len(arrow)), ("task_name", "success"))
    tasks, success = cols["task_name"], cols["success"].astype(bool)
    out: dict[str, list[int]] = {}
    for s, e in ep_ds.episode_ranges:
        counts = out.setdefault(str(tasks[s]), [0, 0])
        counts[0] += int(success[s:e].any())
        counts[1] += 1
    return {t: (c[0], c[1]) for t, c in sorted(out.items())}
