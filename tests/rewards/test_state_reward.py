"""State reward model: labels and value targets from episode datasets, training, save/load and its errors, the
three built-ins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from reward_fixtures import make_trajectories

from rewards import BUILTIN_REWARDS, RewardFunctionError, RewardLoadError, build_reward_scorer
from rewards.state_reward import (
    StateReward,
    StateRewardConfig,
    StateRewardModel,
    load_state_reward,
    save_state_reward,
    split_by_episode,
    state_rows,
    state_rows_from_datasets,
    steps_to_success,
    train_state_reward,
    value_targets,
)
from wlarl.data import write_episodes

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("push-v3", "reach-v3")
GOAL = np.array([0.1, 0.7, 0.05], np.float32)
RADIUS, START = 0.05, 0.3  # success: the task's point within RADIUS of the goal; every episode starts START away
APPROACH = np.array([0.0, -0.8, 0.6], np.float32)  # the side the task's point comes from (jittered per episode)


def full_state(task: str, dist: float, direction: np.ndarray) -> np.ndarray:
    """A 39-d Meta-World-layout state whose task point (push: object, reach: hand) is `dist` from the goal."""
    x = np.zeros(39, np.float32)
    x[36:39] = GOAL
    point = GOAL + dist * direction
    other = GOAL + np.array([0.0, -0.4, 0.2], np.float32)  # the other point stays away
    x[0:3], x[4:7] = (other, point) if task == "push-v3" else (point, other)
    x[3] = 0.5
    x[18:36] = x[0:18]  # the previous frame's 18 dims
    return x


def write_synthetic(path: Path, n_episodes: int = 40, steps: int = 10, seed: int = 0) -> Path:
    """Episodes in which success (distance below RADIUS) and the shaped reward (10 · (1 − d / START)) are functions
    of the full state; half the episodes of each task close in on the goal, the others stall 0.4 to 0.8 of START
    away."""
    rng = np.random.default_rng(seed)

    def episode(ep: int) -> dict:
        task = TASKS[ep % len(TASKS)]
        direction = APPROACH + 0.3 * rng.normal(size=3).astype(np.float32)
        direction /= np.linalg.norm(direction)
        final = rng.uniform(0.0, 0.8 * RADIUS) if (ep // 2) % 2 == 0 else rng.uniform(0.4 * START, 0.8 * START)
        dists = np.concatenate([np.linspace(START, final, steps // 2 + 1), np.full(steps - steps // 2, final)])
        dists = np.clip(dists + rng.normal(0, 0.01, size=len(dists)), 0, None)  # T+1 observations
        full = np.stack([full_state(task, d, direction) for d in dists])
        return {
            "image": np.zeros((steps + 1, 4, 4, 3), np.uint8),
            "state": full[:, :4],
            "full_state": full,
            "action": np.zeros((steps, 4), np.float32),
            "reward": 10 * np.clip(1 - dists[1:] / START, 0, 1),  # reward and success of the state after action t
            "success": dists[1:] < RADIUS,
            "instruction": f"do {task}",
            "task_name": task,
            "seed": ep,
            "noise_mode": "clean",
        }

    return write_episodes((episode(ep) for ep in range(n_episodes)), path, {"image_size": [4, 4]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model dir, metrics) of a model trained once on the synthetic episodes."""
    tmp = tmp_path_factory.mktemp("state_reward")
    data = write_synthetic(tmp / "data")
    _, metrics = train_state_reward(
        data,
        tmp / "out",
        steps=400,
        batch_size=128,
        hidden=32,
        holdout_fraction=0.25,
        calibration_fraction=0.2,
        progress_bar=False,
    )
    return tmp / "out", metrics


# ---------------------------------------------------------------------------------------------------------------- data


def test_rows_are_the_states_after_each_action_with_that_steps_labels(tmp_path):
    t = 4
    full = np.arange(t + 1, dtype=np.float32)[:, None].repeat(39, 1)  # observation k holds k
    ep = {
        "image": np.zeros((t + 1, 4, 4, 3), np.uint8),
        "state": full[:, :4],
        "full_state": full,
        "action": np.zeros((t, 4), np.float32),
        "reward": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
        "success": np.array([False, False, True, True]),
        "instruction": "do reach-v3",
        "task_name": "reach-v3",
        "seed": 0,
        "noise_mode": "clean",
    }
    write_episodes([ep, ep], tmp_path / "ds", {})
    rows = state_rows(tmp_path / "ds")
    assert len(rows) == 2 * t  # observation 0 of each episode has no action before it
    first = rows.episode == rows.episode.min()
    assert rows.full_states[first, 0].tolist() == [1, 2, 3, 4]  # the state after action k-1 ...
    assert rows.reward[first].tolist() == [1, 2, 3, 4]  # ... carries action k-1's reward and success
    assert rows.success[first].tolist() == [False, False, True, True]
    both = state_rows_from_datasets([tmp_path / "ds", tmp_path / "ds"])
    assert len(both) == 4 * t and len(np.unique(both.episode)) == 4  # episode ids stay unique across datasets


def hand_episode(success: list[bool], task: str = "reach-v3") -> dict:
    """An episode of len(success) actions; observation k holds k, row t's success is that of observation t+1."""
    t = len(success)
    full = np.arange(t + 1, dtype=np.float32)[:, None].repeat(39, 1)
    return {
        "image": np.zeros((t + 1, 4, 4, 3), np.uint8),
        "state": full[:, :4],
        "full_state": full,
        "action": np.zeros((t, 4), np.float32),
        "reward": np.zeros(t, np.float32),
        "success": np.array(success),
        "instruction": f"do {task}",
        "task_name": task,
        "seed": 0,
        "noise_mode": "clean",
    }


def test_value_targets_count_env_steps_to_the_episodes_next_successful_state(tmp_path):
    F, T = False, True
    episodes = [[F, F, T, T], [F, T, F, F, T, F], [F, F, F]]  # later, at once / again, never
    write_episodes([hand_episode(s) for s in episodes], tmp_path / "ds", {})
    rows = state_rows(tmp_path / "ds")
    eps = np.unique(rows.episode)
    by_ep = [np.flatnonzero(rows.episode == e)[np.argsort(rows.step[rows.episode == e])] for e in eps]
    k = steps_to_success(rows)
    # observation s (≥ 1) is successful when row s-1 is: episode 0's observations 1..4 are F F T T
    assert k[by_ep[0]].tolist() == [2, 1, 0, 0]  # an already successful state counts 0
    assert k[by_ep[1]].tolist() == [1, 0, 2, 1, 0, np.inf]  # the next success, also after one was lost
    assert k[by_ep[2]].tolist() == [np.inf] * 3
    v = value_targets(rows, 0.5)
    assert v[by_ep[0]].tolist() == [0.25, 0.5, 1.0, 1.0]
    assert v[by_ep[1]].tolist() == [0.5, 1.0, 0.25, 0.5, 1.0, 0.0]
    assert v[by_ep[2]].tolist() == [0.0, 0.0, 0.0]  # never succeeds
    undiscounted = value_targets(rows, 1.0)  # 1 ** inf would be 1: no success must stay 0
    assert undiscounted[by_ep[1]].tolist() == [1, 1, 1, 1, 1, 0] and undiscounted[by_ep[2]].tolist() == [0, 0, 0]
    perm = np.random.default_rng(0).permutation(len(rows))  # rows in any order give the same targets
    assert np.array_equal(value_targets(rows.subset(perm), 0.5), v[perm])


def test_split_by_episode_is_deterministic_whole_and_per_task(tmp_path):
    rows = state_rows(write_synthetic(tmp_path / "ds", n_episodes=20, steps=4))
    train, held = split_by_episode(rows, [0.2], seed=3)
    again = split_by_episode(rows, [0.2], seed=3)[1]
    assert np.array_equal(held.episode, again.episode)
    assert not set(train.episode) & set(held.episode) and len(train) + len(held) == len(rows)
    assert sorted(set(held.task_names)) == list(TASKS) and len(np.unique(held.episode)) == 4  # 2 of 10 per task


# ---------------------------------------------------------------------------------------------------------------- training


def test_training_learns_success_and_progress_from_the_full_state(trained):
    out, metrics = trained
    assert metrics["heldout/success_auroc"] > 0.9
    assert metrics["heldout/progress_spearman"] > 0.8
    assert metrics["heldout/positives"] > 0 and metrics["heldout/negatives"] > 0
    assert metrics["calibration/source"] == "calibration" and 0 < metrics["calibration/threshold"] < 1
    assert {f"heldout/{t}/success_auroc" for t in TASKS} <= set(metrics)
    on_disk = json.loads((out / "metrics.json").read_text())  # strict JSON (no NaN)
    assert on_disk["heldout/success_auroc"] == metrics["heldout/success_auroc"]
    assert sorted(p.name for p in (out / "final").iterdir()) == ["config.json", "model.safetensors"]


def test_training_learns_the_value_of_the_full_state(trained):
    out, metrics = trained
    assert json.loads((out / "final" / "config.json").read_text())["value_head"] is True  # the default now
    assert metrics["train/value_loss"] > 0
    assert metrics["heldout/value_auroc"] > 0.85  # succeeds within the next 24 env steps
    assert metrics["heldout/value_auroc_unsuccessful"] > 0.75
    assert metrics["heldout/value_spearman"] > 0.6 and metrics["heldout/value_mae"] < 0.3


def test_save_load_round_trip_gives_identical_outputs(trained, tmp_path):
    out, _ = trained
    model = load_state_reward(out)  # the output dir: its final/ is used
    x = torch.from_numpy(np.stack([full_state(t, d, np.array([1.0, 0, 0])) for t in TASKS for d in (0.0, 0.1, 0.3)]))
    names = [t for t in TASKS for _ in range(3)]
    before = model.predict(x, names)
    save_state_reward(model, tmp_path / "copy")
    again = load_state_reward(tmp_path / "copy")
    assert again.config == model.config and again.config.value_head
    for a, b in zip(before, again.predict(x, names)):
        assert torch.equal(a, b)
    value = again.predict_value(x, names)
    assert torch.equal(model.predict_value(x, names), value) and ((value >= 0) & (value <= 1)).all()


def old_format_model(path: Path) -> Path:
    """A model saved as before value heads existed: its config.json has no value_head / value_discount."""
    model = StateRewardModel(StateRewardConfig(tasks=list(TASKS), hidden=8))
    model.set_normalisation(torch.rand(20, 39))
    save_state_reward(model, path)
    config = json.loads((path / "config.json").read_text())
    del config["value_head"], config["value_discount"]
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_model_saved_before_value_heads_loads_and_scores_unchanged(tmp_path):
    path = old_format_model(tmp_path / "old")
    model = load_state_reward(path)
    assert not model.config.value_head and model.head.out_features == 2
    scorer = build_reward_scorer(["state_success", "state_progress"], state_reward_path=str(path))
    out = scorer.score(full_states=torch.rand(2, 3, 39), alive=torch.ones(2, 3, dtype=torch.bool), task_names=TASKS)
    assert out.per_function.shape == (2, 2) and torch.isfinite(out.per_function).all()
    with pytest.raises(
        ValueError, match=r"predict_value: state reward model .*old.* has no value head.*--value_head true"
    ):
        model.predict_value(torch.zeros(1, 39), ["reach-v3"])
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "value_head": True}))  # 2-output weights, 3 expected
    with pytest.raises(ValueError, match=r"does not match .*config.json \(config value_head is true: the head has 3"):
        load_state_reward(path)


def test_constant_dims_are_masked_out_of_the_input():
    model = StateRewardModel(StateRewardConfig(tasks=["reach-v3"], hidden=8))
    x = torch.rand(50, 39)
    x[:, 11:18] = 0.0  # the unused second object
    model.set_normalisation(x)
    assert (model.std >= 1e-3).all() and model.active[11:18].sum() == 0 and model.active[:11].all()
    y = x.clone()
    y[:, 11:18] = 0.01  # a World Expert's small error on a dim it never saw move changes nothing
    assert torch.equal(model(x, ["reach-v3"] * 50)[0], model(y, ["reach-v3"] * 50)[0])


# ---------------------------------------------------------------------------------------------------------------- errors


def test_unknown_task_and_wrong_shape_are_named(trained):
    model = load_state_reward(trained[0])
    with pytest.raises(ValueError, match=r"unknown task 'door-open-v3'.*push-v3.*reach-v3"):
        model.predict(torch.zeros(1, 39), ["door-open-v3"])
    with pytest.raises(ValueError, match=r"expected full states \[N, 39\], got \(1, 4\)"):
        model.predict(torch.zeros(1, 4), ["reach-v3"])


def test_missing_and_damaged_files_are_named(trained, tmp_path):
    src = trained[0] / "final"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_state_reward(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_state_reward(bad)
    weights = (src / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"cannot read the weights in .*model.safetensors.*truncated or corrupt"):
        load_state_reward(bad)
    (bad / "model.safetensors").write_bytes(weights)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*config.json.*StateRewardConfig"):
        load_state_reward(bad)
    config = json.loads((src / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "hidden": 16}))  # weights of another config
    with pytest.raises(ValueError, match=r"model.safetensors does not match .*config.json.*shape"):
        load_state_reward(bad)
    (bad / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        load_state_reward(bad)


# ---------------------------------------------------------------------------------------------------------------- rewards


class FixedModel(StateRewardModel):
    """`predict` returns (success prob, progress) and `predict_value` the value, read from the full state's first
    three entries."""

    def predict(self, full_states, task_names, batch_size=8192):
        x = torch.as_tensor(full_states)
        return x[:, 0].clone(), x[:, 1].clone()

    def predict_value(self, full_states, task_names, batch_size=8192):
        return torch.as_tensor(full_states)[:, 2].clone()


def fixed_reward(kind: str, mode: str) -> StateReward:
    model = FixedModel(StateRewardConfig(tasks=["reach-v3"], threshold=0.5, value_head=True))
    return StateReward(model, kind, mode, failure_scale=0.9)


def test_modes_score_the_last_alive_chunk_or_the_best_one():
    full = torch.zeros(3, 3, 39)
    full[:, :, 0] = torch.tensor([[0.2, 0.9, 0.1], [0.1, 0.3, 0.4], [0.6, 0.2, 0.7]])  # success probability
    full[:, :, 1] = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.8, 0.3], [0.1, 0.1, 0.1]])  # progress
    alive = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    kw = dict(full_states=full, alive=alive, task_names=["reach-v3"] * 3)
    assert fixed_reward("success", "final")(**kw) == pytest.approx([0.9, 0.4, 0.6])  # no chunk run: chunk 0
    assert fixed_reward("success", "max")(**kw) == pytest.approx([0.9, 0.4, 0.6])
    assert fixed_reward("progress", "final")(**kw) == pytest.approx([1.0, 0.9 * 0.3, 1.0])
    assert fixed_reward("progress", "max")(**kw) == pytest.approx([1.0, 0.9 * 0.8, 1.0])
    full[:, :, 2] = torch.tensor([[0.3, 0.2, 0.9], [0.6, 0.5, 0.1], [0.4, 0.4, 0.4]])  # value
    assert fixed_reward("value", "final")(**kw) == pytest.approx([1.0, 0.9 * 0.1, 1.0])
    assert fixed_reward("value", "max")(**kw) == pytest.approx([1.0, 0.9 * 0.6, 1.0])


def test_builtins_rank_a_group_success_first_then_by_progress(trained):
    assert {"state_success", "state_progress"} <= set(BUILTIN_REWARDS)
    scorer = build_reward_scorer(["state_success", "state_progress"], state_reward_path=str(trained[0]))
    direction = APPROACH
    dists = [0.01, 0.18, 0.24, 0.3]  # success, then failures further and further from the goal
    full = torch.zeros(8, 2, 39)
    for i, (task, d) in enumerate((t, d) for t in TASKS for d in dists):
        full[i, 0] = torch.from_numpy(full_state(task, START, direction))
        full[i, 1] = torch.from_numpy(full_state(task, d, direction))  # the final chunk
    names = [t for t in TASKS for _ in dists]
    out = scorer.score(full_states=full, alive=torch.ones(8, 2, dtype=torch.bool), task_names=names)
    success, progress = out.per_function[:, 0].view(2, 4), out.per_function[:, 1].view(2, 4)
    assert (success[:, 0] > success[:, 1:].max(dim=1).values).all()
    assert (progress[:, 0] == 1.0).all() and (progress[:, 1:] < 0.9 + 1e-6).all()
    assert (progress[:, 1:-1] > progress[:, 2:]).all()  # failures ordered by how far they got


def test_builtins_need_full_states_and_a_model_path(trained):
    scorer = build_reward_scorer(
        ["state_success", "state_progress"],
        state_reward_path=str(trained[0]),
        reward_kwargs={"state_progress": {"mode": "max", "failure_scale": 0.5}},
    )
    traj = make_trajectories(n=2, t=3)
    assert traj.full_states is None
    with pytest.raises(RewardFunctionError, match="engine gave no full states.*real engine.*full_state_dim > 0"):
        scorer(traj)
    out = scorer(replace(traj, full_states=torch.zeros(2, 3, 39)))  # through trajectory_reward_kwargs
    assert out.per_function.shape == (2, 2) and torch.isfinite(out.per_function).all()
    with pytest.raises(RewardLoadError, match=re.escape("needs `state_reward_path`") + ".*--reward_kwargs"):
        build_reward_scorer(["state_progress"])
    with pytest.raises(ValueError, match=r"failure_scale must be in \[0, 1\)"):
        build_reward_scorer(["state_progress"], state_reward_path=str(trained[0]), failure_scale=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        build_reward_scorer(["state_success"], state_reward_path=str(trained[0]), mode="mean")


def test_state_value_ranks_successes_first_then_states_closer_to_success(trained):
    assert "state_value" in BUILTIN_REWARDS
    scorer = build_reward_scorer(["state_value"], state_reward_path=str(trained[0]))
    dists = [0.01, 0.08, 0.2]  # success; a state the succeeding episodes pass on their way; where failures stall
    direction = APPROACH / np.linalg.norm(APPROACH)
    full = torch.zeros(6, 2, 39)
    for i, (task, d) in enumerate((t, d) for t in TASKS for d in dists):
        full[i, 0] = torch.from_numpy(full_state(task, d, direction))  # the last chunk this row ran
        full[i, 1] = torch.from_numpy(full_state(task, 0.0, direction))  # after the row ended: not scored
    alive = torch.tensor([[True, False]] * 6)
    names = [t for t in TASKS for _ in dists]
    value = scorer.score(full_states=full, alive=alive, task_names=names).per_function[:, 0].view(2, 3)
    assert (value[:, 0] == 1.0).all() and (value[:, 1:] < 0.9 + 1e-6).all()
    assert (value[:, 1] > value[:, 2] + 0.3).all()  # closer to success (it comes soon) scores higher


def test_state_value_needs_a_value_head_full_states_and_a_model_path(trained, tmp_path):
    scorer = build_reward_scorer(
        ["state_value"], state_reward_path=str(trained[0]), reward_kwargs={"state_value": {"mode": "max"}}
    )
    traj = make_trajectories(n=2, t=3)
    with pytest.raises(RewardFunctionError, match="engine gave no full states"):
        scorer(traj)
    out = scorer(replace(traj, full_states=torch.zeros(2, 3, 39)))
    assert out.per_function.shape == (2, 1) and torch.isfinite(out.per_function).all()
    with pytest.raises(RewardLoadError, match=re.escape("reward 'state_value' needs `state_reward_path`")):
        build_reward_scorer(["state_value"])
    old = old_format_model(tmp_path / "old")
    with pytest.raises(ValueError, match=r"state_value: state reward model .* has no value head.*--value_head true"):
        build_reward_scorer(["state_value"], state_reward_path=str(old))
    with pytest.raises(ValueError, match=r"failure_scale must be in \[0, 1\)"):
        build_reward_scorer(["state_value"], state_reward_path=str(trained[0]), failure_scale=1.0)
    with pytest.raises(ValueError, match="value_discount must be in"):
        StateRewardConfig(tasks=["reach-v3"], value_discount=0.0)


def test_recipe_trains_and_prints_the_heldout_metrics(tmp_path):
    data = write_synthetic(tmp_path / "data", n_episodes=12, steps=6)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "recipes/train_state_reward.py", "--config", "debug", "--dataset_path", str(data),
         "--output_dir", str(out), "--steps", "20", "--hidden", "16", "--holdout_fraction", "0.3",
         "--calibration_fraction", "0.3", "--progress_bar", "false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "heldout/success_auroc" in proc.stdout and "heldout/value_mae" in proc.stdout
    assert (out / "final" / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert json.loads((out / "config.json").read_text())["steps"] == 20
    assert json.loads((out / "final" / "config.json").read_text())["value_head"] is True
