"""Episode datasets: atomic writing, loading, SFT windows and start states (see docs/internals.md)."""

from wlarl.data.episodes import (
    META_FILE,
    EpisodeDataset,
    SFTWindows,
    collate_windows,
    load_episodes,
    seeds_by_task,
    start_states,
    window_rows,
    write_episodes,
)
from wlarl.data.starts import keyframe_states, task_outcomes

__all__ = [
    "META_FILE",
    "EpisodeDataset",
    "SFTWindows",
    "collate_windows",
    "keyframe_states",
    "load_episodes",
    "seeds_by_task",
    "start_states",
    "task_outcomes",
    "window_rows",
    "write_episodes",
]
