"""`window_rows`: the one windowing rule of SFT, World-Expert fidelity and predicted frames."""

from __future__ import annotations

import numpy as np
import pytest

from wlarl.data import SFTWindows, load_episodes, write_episodes
from wlarl.data.episodes import _WINDOW_COLUMNS, _read, window_rows


def test_window_rows_of_one_episode_hand_computed():
    # rows 10..15 (5 actions at rows 10..14, final observation at row 15), H = 3
    w = window_rows(10, 16, horizon=3)
    assert w["t"].tolist() == [10, 11, 12, 13, 14]
    assert w["actions"].tolist() == [[10, 11, 12], [11, 12, 13], [12, 13, 14], [13, 14, 14], [14, 14, 14]]
    assert w["valid"].tolist() == [[True] * 3, [True] * 3, [True] * 3, [True, True, False], [True, False, False]]
    assert w["next"].tolist() == [13, 14, 15, 15, 15]
    strided = window_rows(10, 16, horizon=3, stride=2)
    assert strided["t"].tolist() == [10, 12, 14] and strided["next"].tolist() == [13, 15, 15]
    assert len(window_rows(3, 4, horizon=2)["t"]) == 0  # only a final observation: no window
    with pytest.raises(ValueError, match="horizon"):
        window_rows(0, 5, horizon=0)


def _old_sft_item(data, end: int, r: int, h: int) -> dict:
    """SFTWindows.__getitem__ as it was before `window_rows` (reference for the identical-output test)."""
    last = end - 1
    nxt = min(r + h, last)
    chunk = _read(data, slice(r, nxt + 1), _WINDOW_COLUMNS)
    n_valid = min(h, last - r)
    actions = np.asarray(chunk["action"][:n_valid], dtype=np.float32)
    if n_valid < h:
        actions = np.concatenate([actions, np.repeat(actions[-1:], h - n_valid, axis=0)])
    return {
        "image": np.asarray(chunk["image"][0], dtype=np.uint8),
        "state": np.asarray(chunk["state"][0], dtype=np.float32),
        "actions": actions,
        "action_mask": np.arange(h) < n_valid,
        "next_image": np.asarray(chunk["image"][-1], dtype=np.uint8),
        "next_state": np.asarray(chunk["state"][-1], dtype=np.float32),
        "full_state": np.asarray(chunk["full_state"][0], dtype=np.float32),
        "next_full_state": np.asarray(chunk["full_state"][-1], dtype=np.float32),
        "next_success": bool(chunk["success"][-2]),
        "subtask": str(chunk["subtask"][0]),
        "instruction": str(chunk["instruction"][0]),
        "task_name": str(chunk["task_name"][0]),
    }


@pytest.mark.parametrize("horizon,stride", [(1, 1), (3, 1), (4, 2), (9, 3)])
def test_sft_windows_output_is_unchanged(tmp_path, episode_factory, horizon, stride):
    eps = [episode_factory(t=t, seed=i, task=f"task-{i}", success_at=min(2, t - 1)) for i, t in enumerate((6, 1, 4))]
    for ep in eps:  # distinct actions per step, so a wrong action row shows
        ep["action"] = ep["action"] * np.arange(1, 5, dtype=np.float32)[None] + 0.5 * ep["seed"]
    write_episodes(eps, tmp_path / "ds", {"image_size": [8, 8]})
    ep_ds = load_episodes(tmp_path / "ds")
    win = SFTWindows(ep_ds, horizon=horizon, stride=stride)
    data = ep_ds.dataset.with_format("arrow")
    old = [(int(e), int(r)) for s, e in ep_ds.episode_ranges for r in range(int(s), int(e) - 1, stride)]
    assert len(win) == len(old)
    for i, (end, r) in enumerate(old):
        want, got = _old_sft_item(data, end, r, horizon), win[i]
        assert got.keys() == want.keys()
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"window {i} (row {r}), {key}")
