"""Episode datasets on disk (Hugging Face `datasets`), SFT windows and start states.

Schema (one row per observation; see docs/internals.md): `image` Array3D (H, W, 3) uint8, `state` [S],
`full_state` [F], `action` [A], `reward`, `success`, `episode_success`, `subtask`, `instruction`, `task_name`,
`episode_index`, `step_index`, `seed`, `noise_mode`, `is_last`. An episode of T actions has T+1 rows; the last row
holds the final observation with a zero action and `is_last=True`. Metadata lives in `wlarl_meta.json`, written
last, so a directory without it is never mistaken for a complete dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

META_FILE = "wlarl_meta.json"
NOISE_MODES = ("clean", "gaussian", "random_segments", "perturbed_start", "near_miss", "policy")
_PER_OBS = ("image", "state", "full_state")  # T+1 rows
_PER_ACTION = ("action", "reward", "success")  # T rows
_EPISODE_KEYS = ("instruction", "task_name", "seed", "noise_mode")
_STRING_COLUMNS = ("subtask", "instruction", "task_name", "noise_mode")
_WINDOW_COLUMNS = ("image", "state", "full_state", "action", "success", "subtask", "instruction", "task_name")


def _features(image_shape: tuple[int, int, int], state_dim: int, full_dim: int, action_dim: int) -> Any:
    from datasets import Array3D, Features, List, Value

    return Features(
        {
            "image": Array3D(image_shape, "uint8"),
            "state": List(Value("float32"), length=state_dim),
            "full_state": List(Value("float32"), length=full_dim),
            "action": List(Value("float32"), length=action_dim),
            "reward": Value("float32"),
            "success": Value("bool"),
            "episode_success": Value("bool"),
            "subtask": Value("string"),
            "instruction": Value("string"),
            "task_name": Value("string"),
            "episode_index": Value("int64"),
            "step_index": Value("int64"),
            "seed": Value("int64"),
            "noise_mode": Value("string"),
            "is_last": Value("bool"),
        }
    )


def _episode_rows(ep: dict[str, Any], episode_index: int) -> dict[str, list]:
    """Columns (T+1 rows) of one episode dict; validates lengths and names what is wrong."""
    missing = [k for k in (*_PER_OBS[:2], *_PER_ACTION, *_EPISODE_KEYS) if k not in ep]
    if missing:
        raise KeyError(f"episode {episode_index}: missing key(s) {missing}")
    actions = np.asarray(ep["action"], dtype=np.float32)
    if actions.ndim != 2 or len(actions) < 1:
        raise ValueError(f"episode {episode_index}: 'action' must be [T, A] with T >= 1, got {actions.shape}")
    t = len(actions)
    images = np.asarray(ep["image"], dtype=np.uint8)
    states = np.asarray(ep["state"], dtype=np.float32)
    full = np.asarray(ep["full_state"], dtype=np.float32) if "full_state" in ep else states
    for name, arr in (("image", images), ("state", states), ("full_state", full)):
        if len(arr) != t + 1:
            raise ValueError(f"episode {episode_index}: {name!r} needs T+1={t + 1} rows (T actions), got {len(arr)}")
    reward = np.asarray(ep["reward"], dtype=np.float32).reshape(-1)
    success = np.asarray(ep["success"], dtype=bool).reshape(-1)
    for name, arr in (("reward", reward), ("success", success)):
        if len(arr) != t:
            raise ValueError(f"episode {episode_index}: {name!r} needs T={t} rows, got {len(arr)}")
    subtask = list(ep.get("subtask") or [""] * t)
    if len(subtask) not in (t, t + 1):
        raise ValueError(f"episode {episode_index}: 'subtask' needs T or T+1={t + 1} entries, got {len(subtask)}")
    subtask = subtask[:t] + [subtask[t - 1]]  # the final observation row repeats the last step's subtask
    if ep["noise_mode"] not in NOISE_MODES:
        raise ValueError(f"episode {episode_index}: noise_mode {ep['noise_mode']!r} not in {NOISE_MODES}")
    zero = np.zeros((1, actions.shape[1]), np.float32)
    is_last = [False] * t + [True]
    return {
        "image": list(images),
        "state": list(states),
        "full_state": list(full),
        "action": list(np.concatenate([actions, zero])),
        "reward": [*reward.tolist(), 0.0],
        # The final observation's success is that of the step that produced it.
        "success": [*success.tolist(), bool(success[-1])],
        "episode_success": [bool(success.any())] * (t + 1),
        "subtask": [str(s) for s in subtask],
        "instruction": [str(ep["instruction"])] * (t + 1),
        "task_name": [str(ep["task_name"])] * (t + 1),
        "episode_index": [episode_index] * (t + 1),
        "step_index": list(range(t + 1)),
        "seed": [int(ep["seed"])] * (t + 1),
        "noise_mode": [str(ep["noise_mode"])] * (t + 1),
        "is_last": is_last,
    }


def write_episodes(episodes: Iterable[dict[str, Any]], path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write episodes to `path` atomically (temp dir, then swap); returns the path.

    Episodes stream to disk one at a time, so `episodes` may be a generator over a running collection. If it
    raises midway, the previous dataset at `path` (if any) is left untouched and the partial data is removed.

    Args:
        episodes: iterable of episode dicts: `image` [T+1, H, W, 3] uint8, `state` [T+1, S], optional `full_state`
            [T+1, F], `action` [T, A], `reward` [T], `success` [T], optional `subtask` (T strings, or T+1 of which the last is replaced by the
            T-th: the final row repeats the last step's subtask), and
            the scalars `instruction`, `task_name`, `seed`, `noise_mode`.
        path: dataset directory.
        meta: JSON-serialisable metadata (image size, camera, action space, control frequency, simulator and
            version, state layout, collection config); stored as `wlarl_meta.json`.
    """
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = path.parent / f".{path.name}.tmp-{token}"
    staging.mkdir()
    raw = staging / "raw.arrow"
    writer = None
    num_episodes = num_rows = 0
    try:
        for ep in episodes:
            rows = _episode_rows(ep, num_episodes)
            if writer is None:
                image_shape = tuple(np.asarray(rows["image"][0]).shape)
                feats = _features(
                    image_shape, len(rows["state"][0]), len(rows["full_state"][0]), len(rows["action"][0])
                )
                writer = ArrowWriter(features=feats, path=str(raw), writer_batch_size=256)
            writer.write_batch(rows)
            num_episodes += 1
            num_rows += len(rows["step_index"])
        if writer is None:
            raise ValueError(f"write_episodes({path}): no episodes given")
        writer.finalize()
        writer.close()
        writer = None
        ds = Dataset.from_file(str(raw))
        was_disabled = are_progress_bars_disabled()
        disable_progress_bars()  # the caller shows its own progress
        try:
            ds.save_to_disk(str(staging / "data"))
        finally:
            if not was_disabled:
                enable_progress_bars()
        del ds
        raw.unlink()
        final = staging / "data"
        full_meta = {**meta, "num_episodes": num_episodes, "num_rows": num_rows, "format_version": 1}
        (final / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str))
        # Swap: old -> backup, new -> path, drop backup. Readers never see a directory without wlarl_meta.json.
        backup = path.parent / f".{path.name}.old-{token}"
        if path.exists():
            os.replace(path, backup)
        os.replace(final, path)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - best effort cleanup; the original error is re-raised
                pass
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _read(arrow_ds: Any, rows: slice | list[int], columns: Sequence[str] | None = None) -> dict[str, Any]:
    """Rows of a dataset in arrow format as numpy arrays (uint8 images, float32 vectors) and lists of strings.

    Reading through arrow is ~10x faster than the numpy formatter, which also widens uint8 images to int64.
    """
    table = arrow_ds[rows]
    out: dict[str, Any] = {}
    for name in columns or table.column_names:
        col = table.column(name).combine_chunks()
        if name in _STRING_COLUMNS:
            out[name] = col.to_pylist()
        elif name == "image":
            out[name] = col.to_numpy(zero_copy_only=False)  # Array3D extension → uint8 [n, H, W, 3]
        elif name in ("state", "full_state", "action"):
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


@dataclass
class EpisodeDataset:
    """An episode dataset loaded from disk.

    Attributes:
        dataset: the Hugging Face dataset (one row per observation).
        meta: contents of `wlarl_meta.json`.
        episode_ranges: [E, 2] int64 row ranges [start, end) of every episode (the `is_last` row included).
        path: where it was loaded from.
    """

    dataset: Any
    meta: dict[str, Any]
    episode_ranges: np.ndarray
    path: Path | None = None

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ranges)

    def __len__(self) -> int:
        return self.num_episodes

    def episode(self, i: int) -> dict[str, Any]:
        """All columns of episode i as numpy arrays / lists (T+1 rows)."""
        s, e = self.episode_ranges[i]
        return _read(self.dataset.with_format("arrow"), slice(int(s), int(e)))


def load_episodes(path: str | os.PathLike) -> EpisodeDataset:
    """Load a dataset written by `write_episodes`.

    Raises:
        FileNotFoundError: when `path` holds no complete dataset (no `wlarl_meta.json`).
    """
    from datasets import load_from_disk

    path = Path(path)
    if not (path / META_FILE).is_file():
        backups = sorted(path.parent.glob(f".{path.name}.old-*"))
        hint = f"; an interrupted swap left the previous dataset at {backups[-1]}" if backups else ""
        raise FileNotFoundError(f"{path}: not a complete wlarl episode dataset (no {META_FILE}){hint}")
    meta = json.loads((path / META_FILE).read_text())
    ds = load_from_disk(str(path))
    ep_idx = ds.with_format("arrow")["episode_index"].to_numpy()
    if len(ep_idx) == 0:
        raise ValueError(f"{path}: dataset has no rows")
    bounds = np.flatnonzero(np.diff(ep_idx)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(ep_idx)]])
    return EpisodeDataset(
        dataset=ds, meta=meta, episode_ranges=np.stack([starts, ends], 1).astype(np.int64), path=path
    )


def window_rows(start: int, end: int, horizon: int, stride: int = 1) -> dict[str, np.ndarray]:
    """Dataset rows of the H-step windows of one episode occupying rows [start, end) (row end-1 is the final
    observation, with no action): the one windowing rule of SFT, World-Expert fidelity and predicted frames.

    A window starts at every `stride`-th observation that has an action (never the final observation). Its action
    rows t..t+H-1 are padded past the last real action row (end-2) by repeating that row; its target observation is
    row t+H clamped to the final observation.

    Args:
        start, end: the episode's dataset rows [start, end), end - start >= 2 for one window.
        horizon: H, actions per chunk.
        stride: spacing of window starts.

    Returns:
        `t` int64 [W] window start rows, `actions` int64 [W, H] action rows, `next` int64 [W] target observation
        rows, `valid` bool [W, H] (False on padded action rows).
    """
    if horizon < 1 or stride < 1:
        raise ValueError(f"window_rows: horizon={horizon} and stride={stride} must both be >= 1")
    last = int(end) - 1  # final observation row
    t = np.arange(int(start), last, int(stride), dtype=np.int64)  # [W]
    rows = t[:, None] + np.arange(horizon, dtype=np.int64)[None]  # [W, H]
    valid = rows < last
    return {
        "t": t,
        "actions": np.minimum(rows, last - 1),  # [W, H]; padding repeats the last real action row
        "next": np.minimum(t + horizon, last),  # [W]
        "valid": valid,  # [W, H]
    }


def chunk_window_rows(start: int, end: int, horizon: int, chunks: int, stride: int = 1) -> dict[str, np.ndarray]:
    """`window_rows` extended to K consecutive chunks: the rows of open-loop World-Expert training.

    A window starts where a `window_rows` window starts (the same starts t, so as many windows); its chunk k
    (k = 0..K-1) is the H-step window of `window_rows` that starts at row t + kH. A chunk that starts at or past the
    final observation (the episode ended in an earlier chunk) holds still there: its action rows repeat the last real
    action, its target is the final observation, and `chunk_valid` is False.

    Returns:
        `t` int64 [W] window start rows, `actions` int64 [W, K, H] action rows, `next` int64 [W, K] target observation
        rows, `valid` bool [W, K, H] (False on padded action rows), `chunk_valid` bool [W, K] (the chunk has at least
        one real action; chunk 0 always has).
    """
    if chunks < 1:
        raise ValueError(f"chunk_window_rows: chunks={chunks} must be >= 1")
    w = window_rows(start, end, horizon, stride)
    last = int(end) - 1  # final observation row
    u = w["t"][:, None] + horizon * np.arange(chunks, dtype=np.int64)[None]  # [W, K] chunk start rows
    rows = u[..., None] + np.arange(horizon, dtype=np.int64)  # [W, K, H]
    return {
        "t": w["t"],
        "actions": np.minimum(rows, last - 1),  # [W, K, H]; padding repeats the last real action row
        "next": np.minimum(u + horizon, last),  # [W, K]
        "valid": rows < last,  # [W, K, H]
        "chunk_valid": u < last,  # [W, K]
    }


class SFTWindows(torch.utils.data.Dataset):
    """SFT windows: observation at t, action chunk t..t+H-1, observation at t+H, subtask at t; with `chunks` K > 1,
    the K consecutive chunks t..t+KH of open-loop World-Expert training (`WLAPolicy.open_loop_world_losses`).

    Args:
        ep_ds: an `EpisodeDataset`.
        horizon: H, actions per chunk.
        stride: spacing of window starts t within an episode.
        chunks: K, chunks per window (`chunk_window_rows`); 1 gives the one-chunk items below.

    Item (K = 1): `image` uint8 [H_img, W, 3], `state` float32 [S], `actions` float32 [H, A], `action_mask` bool [H]
    (False on padding past the episode end, padded by repeating the last action), `next_image`, `next_state` at
    t+H clamped to the final observation, `full_state` / `next_full_state` float32 [F] at t and t+H,
    `next_success` bool (success of that observation), `subtask`,
    `instruction`, `task_name` (str).

    Item (K > 1): the same keys, those after the observation at t with a leading chunk axis: `actions` [K, H, A],
    `action_mask` [K, H], `next_image` [K, H_img, W, 3], `next_state` [K, S], `next_full_state` [K, F],
    `next_success` [K] (the real targets after each chunk), plus `chunk_mask` bool [K] (`chunk_valid`) and
    `chunk_subtasks` (K strings: the recorded subtask at the start of each chunk). Its chunk 0 is the K = 1 item.
    """

    def __init__(self, ep_ds: EpisodeDataset, horizon: int, stride: int = 1, chunks: int = 1) -> None:
        if horizon < 1 or stride < 1 or chunks < 1:
            raise ValueError(f"SFTWindows: horizon={horizon}, stride={stride} and chunks={chunks} must all be >= 1")
        self.ep_ds = ep_ds
        self.horizon = int(horizon)
        self.stride = int(stride)
        self.chunks = int(chunks)
        self._data = ep_ds.dataset.with_format("arrow")
        if self.chunks > 1:
            windows = [
                chunk_window_rows(s, e, self.horizon, self.chunks, self.stride) for s, e in ep_ds.episode_ranges
            ]
            self._chunk_valid = np.concatenate([w["chunk_valid"] for w in windows])  # [W, K]
        else:
            windows = [window_rows(s, e, self.horizon, self.stride) for s, e in ep_ds.episode_ranges]
        self._row = np.concatenate([w["t"] for w in windows])  # [W] window start rows
        self._actions = np.concatenate([w["actions"] for w in windows])  # [W, H] ([W, K, H]) action rows
        self._next = np.concatenate([w["next"] for w in windows])  # [W] ([W, K]) target observation rows
        self._valid = np.concatenate([w["valid"] for w in windows])  # [W, H] ([W, K, H])

    def __len__(self) -> int:
        return len(self._row)

    @property
    def full_chunk_windows(self) -> int:
        """Windows all of whose K chunks lie inside their episode (all of them when K = 1)."""
        return len(self) if self.chunks == 1 else int(self._chunk_valid.all(1).sum())

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.chunks > 1:
            return self._chunk_item(i)
        r, nxt = int(self._row[i]), int(self._next[i])
        chunk = _read(self._data, slice(r, nxt + 1), _WINDOW_COLUMNS)  # rows r..t+H (clamped), nxt > r always
        actions = np.asarray(chunk["action"], dtype=np.float32)[self._actions[i] - r]  # [H, A]
        mask = self._valid[i].copy()  # [H]
        return {
            "image": np.asarray(chunk["image"][0], dtype=np.uint8),
            "state": np.asarray(chunk["state"][0], dtype=np.float32),
            "actions": actions,  # [H, A]
            "action_mask": mask,  # [H]
            "next_image": np.asarray(chunk["image"][-1], dtype=np.uint8),
            "next_state": np.asarray(chunk["state"][-1], dtype=np.float32),
            "full_state": np.asarray(chunk["full_state"][0], dtype=np.float32),
            "next_full_state": np.asarray(chunk["full_state"][-1], dtype=np.float32),
            # success[k] is the success after action k, i.e. of observation k+1; nxt > r always.
            "next_success": bool(chunk["success"][-2]),
            "subtask": str(chunk["subtask"][0]),
            "instruction": str(chunk["instruction"][0]),
            "task_name": str(chunk["task_name"][0]),
        }

    def _chunk_item(self, i: int) -> dict[str, Any]:
        """Item i of K-chunk windows (see the class docstring)."""
        r = int(self._row[i])
        nxt = self._next[i]  # [K] target observation rows
        rows = _read(self._data, slice(r, int(nxt[-1]) + 1), _WINDOW_COLUMNS)  # rows r..t+KH (clamped)
        images = np.asarray(rows["image"], dtype=np.uint8)
        states = np.asarray(rows["state"], dtype=np.float32)
        full = np.asarray(rows["full_state"], dtype=np.float32)
        j = nxt - r  # [K] target rows within `rows`; j >= 1 always
        start = np.minimum(self.horizon * np.arange(self.chunks), len(images) - 1)  # [K] chunk starts, clamped
        return {
            "image": images[0],
            "state": states[0],
            "actions": np.asarray(rows["action"], dtype=np.float32)[self._actions[i] - r],  # [K, H, A]
            "action_mask": self._valid[i].copy(),  # [K, H]
            "chunk_mask": self._chunk_valid[i].copy(),  # [K]
            "next_image": images[j],  # [K, H_img, W, 3]
            "next_state": states[j],  # [K, S]
            "full_state": full[0],
            "next_full_state": full[j],  # [K, F]
            # success[k] is the success after action k, i.e. of observation k+1
            "next_success": np.asarray(rows["success"], dtype=bool)[j - 1],  # [K]
            "subtask": str(rows["subtask"][0]),
            "chunk_subtasks": [str(rows["subtask"][int(s)]) for s in start],  # K strings
            "instruction": str(rows["instruction"][0]),
            "task_name": str(rows["task_name"][0]),
        }


def collate_windows(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack SFT windows: tensors `image` uint8 [N, H_img, W, 3], `state` [N, S], `actions` [N, H, A],
    `action_mask` bool [N, H], `next_image`, `next_state`, `next_success` bool [N]; lists of N strings
    `subtask`, `instruction`, `task_name`. K-chunk windows stack the same way, their chunk axis second (`actions`
    [N, K, H, A], …), and `chunk_subtasks` becomes N lists of K strings."""
    if not items:
        raise ValueError("collate_windows: empty list of items")
    out: dict[str, Any] = {}
    for key, value in items[0].items():
        if isinstance(value, (str, list)):
            out[key] = [it[key] for it in items]
        else:
            out[key] = torch.from_numpy(np.stack([np.asarray(it[key]) for it in items]))
    return out


def frame_states(ep_ds: EpisodeDataset, rows: Sequence[int]) -> list[dict[str, Any]]:
    """The observations at dataset `rows` as start-state dicts: `image` uint8 [H, W, 3], `state` float32 [S],
    `full_state`, `instruction`, `task_name`, `seed`, `episode_index` and `step_index` (rebuildable in the real
    simulator from task, seed and step)."""
    rows = [int(r) for r in rows]
    if not rows:
        return []
    cols = ("image", "state", "full_state", "instruction", "task_name", "seed", "episode_index", "step_index")
    frames = _read(ep_ds.dataset.with_format("arrow"), rows, cols)
    return [
        {
            "image": np.asarray(frames["image"][i], dtype=np.uint8),
            "state": np.asarray(frames["state"][i], dtype=np.float32),
            "full_state": np.asarray(frames["full_state"][i], dtype=np.float32),
            "instruction": str(frames["instruction"][i]),
            "task_name": str(frames["task_name"][i]),
            "seed": int(frames["seed"][i]),
            "episode_index": int(frames["episode_index"][i]),
            "step_index": int(frames["step_index"][i]),
        }
        for i in range(len(rows))
    ]


def seeds_by_task(ep_ds: EpisodeDataset) -> dict[str, set[int]]:
    """The reset seeds of the dataset's episodes, per task (read from each episode's first row)."""
    first = _read(ep_ds.dataset.with_format("arrow"), ep_ds.episode_ranges[:, 0].tolist(), ("task_name", "seed"))
    out: dict[str, set[int]] = {}
    for task, seed in zip(first["task_name"], first["seed"]):
        out.setdefault(str(task), set()).add(int(seed))
    return out


def start_states(ep_ds: EpisodeDataset) -> list[dict[str, Any]]:
    """First observation of every episode (see `frame_states`)."""
    return frame_states(ep_ds, ep_ds.episode_ranges[:, 0].tolist())
