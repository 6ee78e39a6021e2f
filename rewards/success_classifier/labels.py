"""Labelled frames for the success classifier from an episode dataset (docs/internals.md schema).

Frame t of an episode shows success when ``success`` was set by the action at t-1. Hard negatives are frames of
*failed* episodes whose hand is within ``hard_negative_radius`` of where successful episodes' hands were when they
succeeded — the arm is in the success pose but the object is not, so a classifier that reads the arm gets them wrong
(DESIGN.md). Early negatives are the first frames of successful episodes (same scene, object not yet moved);
boundary frames are the few right before a first success (left out of training, never out of evaluation). A frame's
progress is the simulator's shaped reward of the action that led to it, clip(reward / `PROGRESS_SCALE`, 0, 1)
(Meta-World's unscaled reward is in [0, 10]); the first frame of an episode has none (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class FrameSet:
    """Labelled frames for the success classifier (M frames).

    Attributes:
        images: uint8 [M, H, W, 3].
        labels: bool [M] — the frame shows the task solved.
        task_names: M task names.
        episode: int64 [M] episode ids (splits are by episode).
        hard_negative: bool [M] — negative whose hand is near a success pose of its task.
        early_negative: bool [M] — frame from the early steps of a successful episode (same scene as its positives,
            object not yet moved); sampled with the hard negatives.
        boundary: bool [M] — negative within `boundary_margin` steps before the first success of its episode (nearly
            identical to the positives; the recipe leaves these out of training, never out of evaluation).
        progress: float32 [M] — clip(shaped reward / `PROGRESS_SCALE`, 0, 1) of the step that led to the frame; NaN
            where unknown (an episode's first frame, or a dataset without a ``reward`` column).
    """

    images: np.ndarray
    labels: np.ndarray
    task_names: list[str]
    episode: np.ndarray
    hard_negative: np.ndarray
    early_negative: np.ndarray | None = None
    boundary: np.ndarray | None = None
    progress: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.early_negative is None:
            self.early_negative = np.zeros(len(self.labels), dtype=bool)
        if self.boundary is None:
            self.boundary = np.zeros(len(self.labels), dtype=bool)
        if self.progress is None:
            self.progress = np.full(len(self.labels), np.nan, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> FrameSet:
        idx = np.asarray(idx)
        return FrameSet(
            images=self.images[idx],
            labels=self.labels[idx],
            task_names=[self.task_names[i] for i in idx],
            episode=self.episode[idx],
            hard_negative=self.hard_negative[idx],
            early_negative=self.early_negative[idx],
            boundary=self.boundary[idx],
            progress=self.progress[idx],
        )

    @staticmethod
    def cat(items: Sequence[FrameSet]) -> FrameSet:
        return FrameSet(
            images=np.concatenate([f.images for f in items]),
            labels=np.concatenate([f.labels for f in items]),
            task_names=[t for f in items for t in f.task_names],
            episode=np.concatenate([f.episode for f in items]),
            hard_negative=np.concatenate([f.hard_negative for f in items]),
            early_negative=np.concatenate([f.early_negative for f in items]),
            boundary=np.concatenate([f.boundary for f in items]),
            progress=np.concatenate([f.progress for f in items]),
        )

    def summary(self) -> dict[str, int]:
        return {
            "frames": len(self),
            "positives": int(self.labels.sum()),
            "negatives": int((~self.labels).sum()),
            "hard_negatives": int(self.hard_negative.sum()),
            "early_negatives": int(self.early_negative.sum()),
            "boundary": int(self.boundary.sum()),
            "episodes": len(np.unique(self.episode)),
            "with_progress": int(np.isfinite(self.progress).sum()),
        }


PROGRESS_SCALE = 10.0  # Meta-World's unscaled shaped reward is in [0, 10]
REQUIRED_COLUMNS = ("image", "state", "success", "episode_success", "task_name", "episode_index", "step_index")


def from_previous_step(values: np.ndarray, episode: np.ndarray, step: np.ndarray, fill: Any) -> np.ndarray:
    """Per-action `values` moved onto the frame they led to: row (e, t) gets the value of row (e, t-1), and `fill`
    where the episode has no step t-1 (its first frame). Rows may come in any order; they are matched by (episode,
    step)."""
    order = np.lexsort((step, episode))
    e_sorted, s_sorted = episode[order], step[order]
    follows = np.zeros(len(order), dtype=bool)
    follows[1:] = (e_sorted[1:] == e_sorted[:-1]) & (s_sorted[1:] == s_sorted[:-1] + 1)
    out = np.full(len(values), fill, dtype=values.dtype)
    prev = np.flatnonzero(follows)  # positions in `order` whose predecessor is step t-1 of the same episode
    out[order[prev]] = values[order[prev - 1]]
    return out


def frame_labels(success: np.ndarray, episode: np.ndarray, step: np.ndarray) -> np.ndarray:
    """bool [M]: frame t shows success when the action at t-1 of the same episode set `success`.

    Rows may come in any order; they are matched by (episode, step).
    """
    return from_previous_step(np.asarray(success, dtype=bool), episode, step, False)


def frame_progress(
    reward: np.ndarray, episode: np.ndarray, step: np.ndarray, scale: float = PROGRESS_SCALE
) -> np.ndarray:
    """float32 [M]: frame t's progress is clip(reward / scale, 0, 1) of the action at t-1 of the same episode (the
    step that led to it); NaN for a frame with no such step (an episode's first frame). Rows may come in any order.
    """
    if scale <= 0:
        raise ValueError(f"frame_progress: scale must be > 0, got {scale}")
    progress = np.clip(np.asarray(reward, dtype=np.float32) / scale, 0.0, 1.0)
    return from_previous_step(progress, episode, step, np.nan)


def hard_negative_mask(
    labels: np.ndarray,
    hand_xyz: np.ndarray,
    task_names: Sequence[str],
    episode_success: np.ndarray,
    radius: float,
) -> np.ndarray:
    """bool [M]: frames of failed episodes whose hand is within `radius` of a success pose of the same task.

    Args:
        labels: bool [M] frame labels.
        hand_xyz: float [M, 3] hand position (the first three state entries).
        task_names: M task names.
        episode_success: bool [M] whether the frame's episode succeeded.
        radius: metres.
    """
    mask = np.zeros(len(labels), dtype=bool)
    tasks = np.asarray(task_names)
    for task in np.unique(tasks):
        in_task = tasks == task
        success_poses = hand_xyz[in_task & labels]  # [P, 3]
        candidates = np.where(in_task & ~labels & ~episode_success)[0]
        if len(success_poses) == 0 or len(candidates) == 0:
            continue
        d = torch.cdist(torch.from_numpy(hand_xyz[candidates]).float(), torch.from_numpy(success_poses).float())
        mask[candidates[(d.amin(dim=1) <= radius).numpy()]] = True
    return mask


def _first_success_steps(labels: np.ndarray, episode: np.ndarray, step: np.ndarray):
    """For every episode with a success frame: (bool [M] its frames, step of its first success frame)."""
    for ep in np.unique(episode[labels]):
        in_ep = episode == ep
        yield in_ep, step[in_ep & labels].min()


def early_negative_mask(
    labels: np.ndarray, episode: np.ndarray, step: np.ndarray, early_fraction: float
) -> np.ndarray:
    """bool [M]: frames of successful episodes with step < early_fraction · (step of the first success frame)."""
    mask = np.zeros(len(labels), dtype=bool)
    if early_fraction <= 0:
        return mask
    for in_ep, first in _first_success_steps(labels, episode, step):
        mask |= in_ep & (step < early_fraction * first) & ~labels
    return mask


def boundary_mask(labels: np.ndarray, episode: np.ndarray, step: np.ndarray, margin: int) -> np.ndarray:
    """bool [M]: negatives within `margin` steps before the first success frame of their episode."""
    mask = np.zeros(len(labels), dtype=bool)
    if margin <= 0:
        return mask
    for in_ep, first in _first_success_steps(labels, episode, step):
        mask |= in_ep & (step >= first - margin) & (step < first) & ~labels
    return mask


def _frame_columns(dataset: Any) -> dict[str, Any]:
    """The columns labelling needs, as arrays, from a `datasets.Dataset`, a `save_to_disk` path or an
    `EpisodeDataset`; validates the schema."""
    if isinstance(dataset, (str, Path)):
        from datasets import load_from_disk

        dataset = load_from_disk(str(dataset))
    dataset = getattr(dataset, "dataset", dataset)
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"episode dataset: missing column(s) {missing}; expected the schema of docs/internals.md "
            f"(has {dataset.column_names})"
        )
    cols = dataset.with_format("numpy")
    images = np.asarray(cols["image"], dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"episode dataset: expected images [M, H, W, 3] uint8, got {images.shape}")
    return {
        "images": images,
        "hand": np.asarray(cols["state"], dtype=np.float32)[:, :3],
        "success": np.asarray(cols["success"], dtype=bool),
        "episode": np.asarray(cols["episode_index"], dtype=np.int64),
        "step": np.asarray(cols["step_index"], dtype=np.int64),
        "episode_success": np.asarray(cols["episode_success"], dtype=bool),
        "task_names": [str(t) for t in dataset["task_name"]],
        "reward": np.asarray(cols["reward"], dtype=np.float32) if "reward" in dataset.column_names else None,
    }


def frames_from_dataset(
    dataset: Any, hard_negative_radius: float = 0.05, early_fraction: float = 0.3, boundary_margin: int = 2
) -> FrameSet:
    """Labelled frames from an episode dataset (a `datasets.Dataset`, a path saved with `save_to_disk`, or an
    `EpisodeDataset` with `.dataset`), with hard negatives (`hard_negative_radius`, metres) and early negatives (the
    first `early_fraction` of each successful episode before its success), and the `boundary_margin` frames right
    before each first success marked."""
    (frames,) = frames_from_datasets([dataset], hard_negative_radius, early_fraction, boundary_margin)
    return frames


def frames_from_datasets(
    datasets: Sequence[Any],
    hard_negative_radius: float = 0.05,
    early_fraction: float = 0.3,
    boundary_margin: int = 2,
) -> list[FrameSet]:
    """Labelled frames of several episode datasets, one `FrameSet` each (arguments as in `frames_from_dataset`).

    Hard negatives are found against the success poses of every dataset (a near-miss collection has few successes
    of its own); episode ids of the i-th dataset are offset past those of the datasets before it, so they stay
    unique when the sets are concatenated (the first keeps its own ids).
    """
    cols = [_frame_columns(d) for d in datasets]
    offset = 0
    for c in cols:
        c["episode"] = c["episode"] + offset
        if len(c["episode"]):
            offset = int(c["episode"].max()) + 1
        c["labels"] = frame_labels(c["success"], c["episode"], c["step"])
    hard = hard_negative_mask(
        np.concatenate([c["labels"] for c in cols]),
        np.concatenate([c["hand"] for c in cols]),
        [t for c in cols for t in c["task_names"]],
        np.concatenate([c["episode_success"] for c in cols]),
        hard_negative_radius,
    )
    out, start = [], 0
    for c in cols:
        labels, episode, step = c["labels"], c["episode"], c["step"]
        out.append(
            FrameSet(
                c["images"],
                labels,
                c["task_names"],
                episode,
                hard_negative=hard[start : start + len(labels)],
                early_negative=early_negative_mask(labels, episode, step, early_fraction),
                boundary=boundary_mask(labels, episode, step, boundary_margin),
                progress=None if c["reward"] is None else frame_progress(c["reward"], episode, step),
            )
        )
        start += len(labels)
    return out


def split_by_episode(frames: FrameSet, fractions: Sequence[float], seed: int = 0) -> list[FrameSet]:
    """Split frames into len(fractions)+1 parts by episode: the listed fractions, then the rest (first part).

    Episodes are shuffled within each (task, episode outcome) stratum so every part sees every task and both
    outcomes when there are enough episodes. Returns [rest, part_1, …].
    """
    rng = np.random.default_rng(seed)
    episodes = np.unique(frames.episode)
    ep_task = {}
    ep_ok = {}
    for i, e in enumerate(frames.episode):
        ep_task.setdefault(e, frames.task_names[i])
        ep_ok[e] = ep_ok.get(e, False) or bool(frames.labels[i])
    assign: dict[int, int] = {}
    strata: dict[tuple[str, bool], list[int]] = {}
    for e in episodes:
        strata.setdefault((ep_task[e], ep_ok[e]), []).append(int(e))
    for eps in strata.values():
        eps = list(rng.permutation(eps))
        start = 0
        for part, frac in enumerate(fractions, start=1):
            k = int(round(frac * len(eps)))
            if frac > 0 and k == 0 and len(eps) - start >= 2:
                k = 1
            for e in eps[start : start + k]:
                assign[e] = part
            start += k
        for e in eps[start:]:
            assign[e] = 0
    part_of = np.array([assign[int(e)] for e in frames.episode])
    return [frames.subset(np.where(part_of == p)[0]) for p in range(len(fractions) + 1)]


def sampling_weights(frames: FrameSet, hard_negative_fraction: float = 0.25) -> np.ndarray:
    """float [M] sampling weights: half the mass on positives, `hard_negative_fraction` on hard and early negatives,
    the rest on other negatives (renormalised when a group is absent)."""
    hard = (frames.hard_negative | frames.early_negative) & ~frames.labels
    groups = [frames.labels, hard, ~frames.labels & ~hard]
    mass = [0.5, hard_negative_fraction, 0.5 - hard_negative_fraction]
    w = np.zeros(len(frames), dtype=np.float64)
    for g, m in zip(groups, mass):
        if g.any() and m > 0:
            w[g] = m / g.sum()
    if w.sum() == 0:
        w[:] = 1.0
    return w / w.sum()
