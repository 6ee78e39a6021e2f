"""Dynamics ensemble: one-chunk pairs from episode datasets, training on synthetic linear dynamics, save/load and its
errors, and the `dynamics_disagreement` built-in (a MOPO-style penalty)."""

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
from rewards.dynamics_ensemble import (
    DynamicsDisagreementReward,
    DynamicsEnsemble,
    DynamicsEnsembleConfig,
    chunk_pairs,
    chunk_pairs_from_datasets,
    load_dynamics_ensemble,
    save_dynamics_ensemble,
    split_pairs_by_episode,
    train_dynamics_ensemble,
)
from wlarl.data import write_episodes

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("push-v3", "reach-v3")
F, H, A = 6, 2, 4  # H and A as in reward_fixtures.make_trajectories
CONSTANT = 5  # full-state dim that never moves (like Meta-World's unused second object)
DECAY = 0.9
GAIN = {  # per-task action → state map [F, A]; the constant dim gets nothing
    task: np.concatenate([np.random.default_rng(k).normal(0, 0.3, (F - 1, A)), np.zeros((1, A))]).astype(np.float32)
    for k, task in enumerate(TASKS)
}


def step(task: str, s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Linear dynamics of one env step: s' = s + (DECAY − 1) s + GAIN a on the moving dims."""
    nxt = s + GAIN[task] @ a
    nxt[:CONSTANT] -= (1 - DECAY) * s[:CONSTANT]
    return nxt


def write_linear(path: Path, n_episodes: int = 24, steps: int = 30, seed: int = 0) -> Path:
    """Episodes of the linear dynamics from states in [-1, 1] with actions N(0, 0.5) clipped to [-1, 1]."""
    rng = np.random.default_rng(seed)

    def episode(ep: int) -> dict:
        task = TASKS[ep % len(TASKS)]
        s = np.concatenate([rng.uniform(-1, 1, F - 1), [0.7]]).astype(np.float32)
        actions = np.clip(rng.normal(0, 0.5, (steps, A)), -1, 1).astype(np.float32)
        full = [s]
        for a in actions:
            full.append(step(task, full[-1], a))
        full = np.stack(full).astype(np.float32)  # [T+1, F]
        return {
            "image": np.zeros((steps + 1, 4, 4, 3), np.uint8),
            "state": full[:, :4],
            "full_state": full,
            "action": actions,
            "reward": np.zeros(steps, np.float32),
            "success": np.zeros(steps, bool),
            "instruction": f"do {task}",
            "task_name": task,
            "seed": ep,
            "noise_mode": "clean",
        }

    return write_episodes((episode(ep) for ep in range(n_episodes)), path, {"image_size": [4, 4]})


def rollout(task: str, s: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Full states after each chunk, [T, F], from s and chunks [T, H, A]."""
    out = []
    for chunk in actions:
        for a in chunk:
            s = step(task, s, a)
        out.append(s)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(ensemble dir, metrics) of an ensemble trained once on the linear episodes."""
    tmp = tmp_path_factory.mktemp("dynamics_ensemble")
    data = write_linear(tmp / "data")
    torch.manual_seed(0)
    _, metrics = train_dynamics_ensemble(
        data, tmp / "out", horizon=H, members=3, hidden=32, steps=600, batch_size=128, holdout_fraction=0.25,
        progress_bar=False,
    )  # fmt: skip
    return tmp / "out", metrics


def in_distribution(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Full states [n, F] and chunks [n, H, A] like the training data's."""
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.uniform(-1, 1, (n, F - 1)), np.full((n, 1), 0.7)], axis=1)
    a = np.clip(rng.normal(0, 0.5, (n, H, A)), -1, 1)
    return torch.tensor(s, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------- data


def hand_episode(t: int, task: str = "reach-v3") -> dict:
    """T=t actions; observation k holds k in every dim, action k holds 100 + k."""
    full = np.arange(t + 1, dtype=np.float32)[:, None].repeat(F, 1)
    return {
        "image": np.zeros((t + 1, 4, 4, 3), np.uint8),
        "state": full[:, :4],
        "full_state": full,
        "action": (100 + np.arange(t, dtype=np.float32))[:, None].repeat(A, 1),
        "reward": np.zeros(t, np.float32),
        "success": np.zeros(t, bool),
        "instruction": f"do {task}",
        "task_name": task,
        "seed": 0,
        "noise_mode": "clean",
    }


def test_pairs_are_whole_chunks_inside_episodes(tmp_path):
    write_episodes([hand_episode(5), hand_episode(1), hand_episode(4, "push-v3")], tmp_path / "ds", {})
    pairs = chunk_pairs(tmp_path / "ds", horizon=3)
    first = pairs.episode == 0
    assert pairs.step[first].tolist() == [0, 1, 2]  # t + H ≤ T: no chunk padded past the episode end
    assert pairs.full_states[first, 0].tolist() == [0, 1, 2]
    assert pairs.next_full_states[first, 0].tolist() == [3, 4, 5]  # observation t + H
    assert pairs.actions[first][:, :, 0].tolist() == [[100, 101, 102], [101, 102, 103], [102, 103, 104]]
    assert pairs.actions.shape[1:] == (3, A) and pairs.full_states.shape[1] == F
    assert not (pairs.episode == 1).any()  # one action is shorter than a chunk
    assert pairs.step[pairs.episode == 2].tolist() == [0, 1] and {pairs.task_names[i] for i in np.flatnonzero(
        pairs.episode == 2)} == {"push-v3"}  # fmt: skip
    assert chunk_pairs(tmp_path / "ds", horizon=2, stride=2).step.tolist() == [0, 2, 0, 2]
    both = chunk_pairs_from_datasets([tmp_path / "ds", tmp_path / "ds"], horizon=3)
    assert len(both) == 2 * len(pairs) and len(np.unique(both.episode)) == 4  # episode ids kept unique
    with pytest.raises(ValueError, match="no episode of at least H=9 actions"):
        chunk_pairs_from_datasets(tmp_path / "ds", horizon=9)


def test_extra_pairs_train_beside_the_datasets(tmp_path):
    data = write_linear(tmp_path / "ds", n_episodes=8, steps=6)
    base = chunk_pairs(data, horizon=H)
    extra = replace(base, episode=base.episode + 1_000)  # the same transitions under other episode ids
    kw = dict(horizon=H, members=2, hidden=16, steps=5, holdout_fraction=0.25, progress_bar=False)
    _, plain = train_dynamics_ensemble(data, **kw)
    _, more = train_dynamics_ensemble(data, extra_pairs=extra, **kw)
    assert more["data/all_pairs"] == 2 * plain["data/all_pairs"]
    assert more["data/all_episodes"] == 2 * plain["data/all_episodes"]
    assert more["data/train_pairs"] + more["data/heldout_pairs"] == more["data/all_pairs"]


def test_split_is_by_episode_per_task_and_deterministic(tmp_path):
    pairs = chunk_pairs(write_linear(tmp_path / "ds", n_episodes=12, steps=6), horizon=H)
    train, held = split_pairs_by_episode(pairs, 0.34, seed=3)
    again = split_pairs_by_episode(pairs, 0.34, seed=3)[1]
    assert np.array_equal(held.episode, again.episode) and len(train) + len(held) == len(pairs)
    assert not set(train.episode) & set(held.episode)
    assert sorted(set(held.task_names)) == list(TASKS) and len(np.unique(held.episode)) == 4  # 2 of 6 per task


# ---------------------------------------------------------------------------------------------------------------- training


def test_ensemble_learns_the_change_and_disagrees_off_the_training_distribution(trained):
    out, metrics = trained
    assert metrics["data/heldout_episodes"] == 6 and metrics["heldout/pairs"] > 100
    assert metrics["heldout/active_output_dims"] == F - 1  # the constant dim is masked out
    assert metrics["heldout/ensemble_mse"] < 0.05 * metrics["heldout/zero_change_mse"]
    assert metrics["heldout/ensemble_mse"] <= metrics["heldout/member_mse_mean"] + 1e-6
    assert all(metrics[f"heldout/member_{m}_mse"] < 0.1 for m in range(3))
    assert metrics["heldout/disagreement_error_spearman"] > 0.3  # 0.50–0.67 over data seeds 0–2
    model = load_dynamics_ensemble(out)
    x, a = in_distribution(200)
    names = [TASKS[i % 2] for i in range(200)]
    inside = model.disagreement(x, a, names)
    far_states = model.disagreement(x + 4.0, a, names)  # states 4 away from a training box of width 2
    strong_actions = model.disagreement(x, a * 4.0, names)
    assert far_states.mean() > 3 * inside.mean() and strong_actions.mean() > 3 * inside.mean()
    assert sorted(p.name for p in (out / "final").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "metrics.json").read_text())["heldout/ensemble_mse"] == metrics["heldout/ensemble_mse"]


def test_members_differ_in_initialisation_and_are_seeded():
    config = DynamicsEnsembleConfig(full_state_dim=F, action_dim=A, horizon=H, tasks=list(TASKS), members=3)
    a, b = DynamicsEnsemble(config), DynamicsEnsemble(config)
    w = a.layers[0].weight
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # same seed, same ensemble
    with pytest.raises(ValueError, match="members must be an integer ≥ 2"):
        DynamicsEnsembleConfig(tasks=["reach-v3"], members=1)


def test_constant_dims_are_masked_out_of_inputs_and_outputs():
    model = DynamicsEnsemble(DynamicsEnsembleConfig(full_state_dim=F, action_dim=A, horizon=H, tasks=["reach-v3"]))
    x, a = in_distribution(50)
    nxt = x.clone()
    nxt[:, :CONSTANT] += 0.1 * torch.randn(50, CONSTANT)
    model.set_normalisation(x, a, nxt)
    assert model.in_active[CONSTANT] == 0 and model.out_active[CONSTANT] == 0 and model.out_active[:CONSTANT].all()
    y = x.clone()
    y[:, CONSTANT] += 0.01  # a World Expert's small error on a dim that never moved changes nothing
    names = ["reach-v3"] * 50
    assert torch.equal(model.predict(x, a, names), model.predict(y, a, names))
    assert (model.predict(x, a, names)[..., CONSTANT] == 0).all()


# ---------------------------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_outputs(trained, tmp_path):
    model = load_dynamics_ensemble(trained[0])  # the output dir: its final/ is used
    x, a = in_distribution(16)
    names = [TASKS[i % 2] for i in range(16)]
    save_dynamics_ensemble(model, tmp_path / "copy")
    again = load_dynamics_ensemble(tmp_path / "copy")
    assert again.config == model.config and again.source == str(tmp_path / "copy")
    assert torch.equal(model.predict(x, a, names), again.predict(x, a, names))
    assert torch.equal(model.out_active, again.out_active) and torch.equal(model.in_std, again.in_std)
    assert not list((tmp_path / "copy").glob(".*tmp*"))  # atomic writes leave no temp files


def test_missing_and_damaged_files_are_named(trained, tmp_path):
    src = trained[0] / "final"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_dynamics_ensemble(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_dynamics_ensemble(bad)
    weights = (src / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"cannot read the weights in .*model.safetensors.*truncated or corrupt"):
        load_dynamics_ensemble(bad)
    (bad / "model.safetensors").write_bytes(weights)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read .*config.json.*DynamicsEnsembleConfig"):
        load_dynamics_ensemble(bad)
    config = json.loads((src / "config.json").read_text())
    for other in ({"hidden": 16}, {"members": 4}):  # weights of another config
        (bad / "config.json").write_text(json.dumps({**config, **other}))
        with pytest.raises(ValueError, match=r"model.safetensors does not match .*config.json.*shape"):
            load_dynamics_ensemble(bad)
    (bad / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        load_dynamics_ensemble(bad)
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "wlarl_state_reward"}))
    with pytest.raises(ValueError, match="model_type is 'wlarl_state_reward'"):
        load_dynamics_ensemble(bad)


def test_unknown_task_and_wrong_shapes_are_named(trained):
    model = load_dynamics_ensemble(trained[0])
    with pytest.raises(ValueError, match=r"unknown task 'door-open-v3'.*push-v3.*reach-v3"):
        model.disagreement(torch.zeros(1, F), torch.zeros(1, H, A), ["door-open-v3"])
    with pytest.raises(ValueError, match=rf"expected full states \[N, {F}\], got \(1, 39\)"):
        model.disagreement(torch.zeros(1, 39), torch.zeros(1, H, A), ["reach-v3"])
    with pytest.raises(ValueError, match=r"expected actions \[N=1, H=2, A=4\].*got \(1, 8, 4\)"):
        model.disagreement(torch.zeros(1, F), torch.zeros(1, 8, 4), ["reach-v3"])


# ---------------------------------------------------------------------------------------------------------------- reward


def batch(n: int, t: int, seed: int = 2) -> dict:
    """Reward kwargs of n rows, t chunks of the true linear dynamics from in-distribution starts."""
    s, _ = in_distribution(n, seed)
    a = in_distribution(n * t, seed + 1)[1].reshape(n, t, H, A)
    names = [TASKS[i % 2] for i in range(n)]
    full = np.stack([rollout(names[i], s[i].numpy(), a[i].numpy()) for i in range(n)])
    return dict(full_states=torch.from_numpy(full), actions=a, task_names=names, start_full_states=s)


def test_reward_is_a_penalty_larger_off_distribution(trained):
    assert "dynamics_disagreement" in BUILTIN_REWARDS
    scorer = build_reward_scorer(["dynamics_disagreement"], dynamics_ensemble_path=str(trained[0]))
    kw = batch(8, 3)
    far = dict(kw, full_states=kw["full_states"] + 4.0, start_full_states=kw["start_full_states"] + 4.0)
    inside = scorer.score(**kw).per_function[:, 0]
    outside = scorer.score(**far).per_function[:, 0]
    assert (inside <= 0).all() and (outside <= 0).all()
    assert (outside < inside).all() and outside.mean() < 3 * inside.mean()  # larger in magnitude, every row
    fn = scorer.funcs[0]
    u, scored = fn.chunk_uncertainty(kw["full_states"], kw["actions"], kw["task_names"], kw["start_full_states"])
    assert scored.all() and torch.allclose(inside, -u.mean(dim=1))
    chunk0 = fn.model.disagreement(kw["start_full_states"], kw["actions"][:, 0], kw["task_names"])
    assert torch.allclose(u[:, 0], chunk0)  # chunk 0 from the start's full state


def test_reward_respects_alive_and_scores_chunk0_only_with_the_start_state(trained):
    fn = build_reward_scorer(["dynamics_disagreement"], dynamics_ensemble_path=str(trained[0])).funcs[0]
    kw = batch(4, 3)
    alive = torch.tensor([[True, True, False], [True, True, True], [True, False, False], [False, False, False]])
    base = fn(**kw, alive=alive)
    u, _ = fn.chunk_uncertainty(kw["full_states"], kw["actions"], kw["task_names"], kw["start_full_states"])
    expected = [-u[0, :2].mean(), -u[1].mean(), -u[2, 0], -u[3, 0]]  # a row that ran nothing counts chunk 0
    assert base == pytest.approx([float(v) for v in expected], rel=1e-5)
    dead = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kw.items()}
    dead["full_states"][0, 2] += 10.0  # after row 0 stopped: not its business
    dead["actions"][0, 2] *= 5.0
    dead["full_states"][2, 1:] += 10.0  # row 2 ran chunk 0 only: what followed is not scored
    assert fn(**dead, alive=alive)[:3] == pytest.approx(base[:3], rel=1e-6)
    no_start = fn(**{k: v for k, v in kw.items() if k != "start_full_states"}, alive=alive)
    assert no_start[0] == pytest.approx(-u[0, 1].item(), rel=1e-5)  # chunks 1..T-1 from full_states[:, t-1]
    assert no_start[1] == pytest.approx(-u[1, 1:].mean().item(), rel=1e-5)
    assert no_start[2] is None and no_start[3] is None  # ran chunk 0 alone: nothing to score, skipped


def test_error_mode_measures_the_world_experts_change_against_the_ensemble(trained):
    fn = build_reward_scorer(
        ["dynamics_disagreement"],
        dynamics_ensemble_path=str(trained[0]),
        reward_kwargs={"dynamics_disagreement": {"mode": "error"}},
    ).funcs[0]
    assert fn.mode == "error"
    kw = batch(6, 2)
    true = fn(**kw)  # the real dynamics: the ensemble's own (small) error
    wrong = dict(kw, full_states=kw["full_states"] + 0.5 * torch.randn(6, 2, F))  # a World Expert that is off
    off = fn(**wrong)
    assert all(v <= 0 for v in true + off) and np.mean(off) < 3 * np.mean(true)
    assert all(o < t for o, t in zip(off, true))


def test_factory_and_input_errors_are_named(trained):
    path = str(trained[0])
    with pytest.raises(RewardLoadError, match=re.escape("needs `dynamics_ensemble_path`") + ".*--reward_kwargs"):
        build_reward_scorer(["dynamics_disagreement"])
    with pytest.raises(ValueError, match="mode must be one of"):
        build_reward_scorer(["dynamics_disagreement"], dynamics_ensemble_path=path, mode="max")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_reward_scorer(["dynamics_disagreement"], dynamics_ensemble_path=path + "/nowhere")
    scorer = build_reward_scorer(["dynamics_disagreement"], dynamics_ensemble_path=path)
    traj = make_trajectories(n=2, t=3, task_names=["reach-v3", "push-v3"])  # H=2, A=4 like the ensemble
    assert traj.full_states is None
    with pytest.raises(RewardFunctionError, match="engine gave no full states.*full_state_dim > 0"):
        scorer(traj)
    out = scorer(replace(traj, full_states=torch.zeros(2, 3, F)))  # through trajectory_reward_kwargs
    assert out.per_function.shape == (2, 1) and (out.per_function <= 0).all()
    kw = batch(2, 3)
    with pytest.raises(RewardFunctionError, match=r"expected full_states \[N, T, F=6\], got \(2, 3, 39\)"):
        scorer.score(**dict(kw, full_states=torch.zeros(2, 3, 39)))
    with pytest.raises(RewardFunctionError, match=r"expected actions \[N=2, T=3, H=2, A=4\].*got \(2, 3, 8, 4\)"):
        scorer.score(**dict(kw, actions=torch.zeros(2, 3, 8, 4)))
    with pytest.raises(RewardFunctionError, match=r"expected start_full_states \[N=2, F=6\]"):
        scorer.score(**dict(kw, start_full_states=torch.zeros(3, F)))
    with pytest.raises(RewardFunctionError, match=r"alive is \(2, 2\)"):
        scorer.score(**kw, alive=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(RewardFunctionError, match=r"unknown task 'door-open-v3'"):
        scorer.score(**dict(kw, task_names=["door-open-v3", "reach-v3"]))
    assert isinstance(scorer.funcs[0], DynamicsDisagreementReward)


def test_recipe_trains_and_prints_the_heldout_metrics(tmp_path):
    data = write_linear(tmp_path / "data", n_episodes=8, steps=8)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "recipes/train_dynamics_ensemble.py", "--config", "debug", "--dataset_path", str(data),
         "--output_dir", str(out), "--horizon", str(H), "--members", "3", "--hidden", "16", "--steps", "20",
         "--holdout_fraction", "0.25", "--progress_bar", "false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "heldout/ensemble_mse" in proc.stdout and "heldout/disagreement_error_spearman" in proc.stdout
    assert (out / "final" / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert json.loads((out / "config.json").read_text())["steps"] == 20
    assert json.loads((out / "final" / "config.json").read_text())["members"] == 3
