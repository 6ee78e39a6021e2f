"""Episode datasets: round trip, SFT windows, start states, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wlarl.data import META_FILE, SFTWindows, collate_windows, load_episodes, start_states, write_episodes

META = {"image_size": [8, 8], "camera": "corner", "control_frequency": 80.0}


def _write(path, factory, lengths=(6, 4)):
    eps = [factory(t=t, seed=10 + i, task=f"task-{i}") for i, t in enumerate(lengths)]
    write_episodes(eps, path, META)
    return eps


def test_round_trip_schema_and_meta(tmp_path, episode_factory):
    eps = _write(tmp_path / "ds", episode_factory)
    ep_ds = load_episodes(tmp_path / "ds")
    assert ep_ds.num_episodes == 2
    np.testing.assert_array_equal(ep_ds.episode_ranges, [[0, 7], [7, 12]])
    assert ep_ds.meta["camera"] == "corner" and ep_ds.meta["num_episodes"] == 2 and ep_ds.meta["num_rows"] == 12
    ds = ep_ds.dataset
    assert set(ds.column_names) >= {
        "image", "state", "full_state", "action", "reward", "success", "episode_success", "subtask",
        "instruction", "task_name", "episode_index", "step_index", "seed", "noise_mode", "is_last",
    }  # fmt: skip
    ep0 = ep_ds.episode(0)
    np.testing.assert_array_equal(ep0["image"], eps[0]["image"])
    assert ep0["image"].dtype == np.uint8 and ep0["image"].shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(ep0["action"][:6], eps[0]["action"])
    np.testing.assert_array_equal(ep0["action"][6], np.zeros(4))  # final observation row: zero action
    assert ep0["is_last"].tolist() == [False] * 6 + [True]
    assert ep0["step_index"].tolist() == list(range(7))
    assert ep0["subtask"][-1] == ep0["subtask"][-2]
    assert ep0["episode_success"].all() and ep0["seed"][0] == 10 and ep0["task_name"][0] == "task-0"


def test_sft_windows_shapes_padding_and_next_obs(tmp_path, episode_factory):
    _write(tmp_path / "ds", episode_factory)
    win = SFTWindows(load_episodes(tmp_path / "ds"), horizon=3)
    assert len(win) == 6 + 4  # one window per action, never starting at an is_last row
    first = win[0]
    assert first["image"].shape == (8, 8, 3) and first["image"].dtype == np.uint8
    assert first["actions"].shape == (3, 4) and first["action_mask"].all()
    assert first["next_image"][0, 0, 0] == 3 and first["next_state"][0] == 3  # observation at t+H
    assert not first["next_success"]  # observation 3 comes from action 2; success starts after action 3
    late = win[4]  # t=4 of a 6-action episode: actions 4,5 then padding
    assert late["action_mask"].tolist() == [True, True, False]
    np.testing.assert_array_equal(late["actions"][2], late["actions"][1])  # padded by repeating the last action
    assert late["next_image"][0, 0, 0] == 6  # clamped to the final observation
    assert late["subtask"] == "phase 1" and late["task_name"] == "task-0"

    batch = collate_windows([win[i] for i in range(5)])
    assert batch["image"].shape == (5, 8, 8, 3) and batch["image"].dtype == torch.uint8
    assert batch["actions"].shape == (5, 3, 4) and batch["action_mask"].dtype == torch.bool
    assert batch["next_success"].shape == (5,) and isinstance(batch["instruction"], list)
    assert len(SFTWindows(load_episodes(tmp_path / "ds"), horizon=3, stride=2)) == 3 + 2


def test_next_success_is_that_of_the_observation_at_t_plus_h(tmp_path, episode_factory):
    write_episodes([episode_factory(t=6, success_at=4)], tmp_path / "ds", META)
    win = SFTWindows(load_episodes(tmp_path / "ds"), horizon=2)
    # success[k] is after action k, i.e. of observation k+1: observation 5 is the first successful one.
    assert [bool(win[t]["next_success"]) for t in range(6)] == [False, False, False, True, True, True]


def test_start_states(tmp_path, episode_factory):
    _write(tmp_path / "ds", episode_factory)
    starts = start_states(load_episodes(tmp_path / "ds"))
    assert [s["seed"] for s in starts] == [10, 11]
    assert [s["task_name"] for s in starts] == ["task-0", "task-1"]
    assert starts[0]["image"].shape == (8, 8, 3) and starts[0]["image"].max() == 0
    assert starts[1]["state"].dtype == np.float32 and starts[1]["instruction"] == "do task-1"


def test_interrupted_write_keeps_previous_dataset(tmp_path, episode_factory):
    path = tmp_path / "ds"
    _write(path, episode_factory)

    def crashing():
        yield episode_factory(t=5, seed=99)
        raise RuntimeError("collection interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_episodes(crashing(), path, META)
    ep_ds = load_episodes(path)  # still the old, complete dataset
    assert ep_ds.num_episodes == 2 and [s["seed"] for s in start_states(ep_ds)] == [10, 11]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no half-written leftovers

    write_episodes([episode_factory(t=5, seed=99)], path, META)  # a completed rewrite replaces it
    assert load_episodes(path).num_episodes == 1


def test_incomplete_directory_is_not_a_dataset(tmp_path, episode_factory):
    _write(tmp_path / "ds", episode_factory)
    (tmp_path / "ds" / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_episodes(tmp_path / "ds")


def test_bad_episode_is_named(tmp_path, episode_factory):
    ep = episode_factory(t=4)
    ep["image"] = ep["image"][:-1]
    with pytest.raises(ValueError, match="episode 0: 'image' needs T\\+1=5 rows"):
        write_episodes([ep], tmp_path / "ds", META)
    assert not (tmp_path / "ds").exists()
    json.dumps(META)
