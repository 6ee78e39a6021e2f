"""start_sampling='signal': starts are drawn by the estimated rate at which their groups carry signal (per start,
shrunk to its task), the counts are shared by processes, saved with checkpoints and continued on resume."""

from __future__ import annotations

import json

import pytest
import torch
from test_budget import _trainer
from test_grpo_trainer import _rows

from wlarl.configs import GRPOWorldConfig
from wlarl.trainer.start_sampling import SignalStartSampler

TASKS = ["reach-v3", "reach-v3", "push-v3", "push-v3"]


def test_unseen_starts_are_drawn_uniformly():
    s = SignalStartSampler(TASKS)
    assert torch.allclose(s.weights(), torch.full((4,), 0.25, dtype=torch.float64))
    assert s.task_shares() == pytest.approx({"push-v3": 0.5, "reach-v3": 0.5})


def test_the_rate_is_the_posterior_mean_per_start_shrunk_to_its_task():
    s = SignalStartSampler(TASKS, prior_strength=2.0)
    s.update(torch.tensor([0, 0, 0, 2, 2, 2]), torch.tensor([True, True, False, False, False, False]))
    # tasks: reach 2 kept of 3 → (2+1)/(3+2) = 0.6; push 0 of 3 → 1/5 = 0.2
    assert s.task_rates().tolist() == pytest.approx([0.2, 0.6])  # sorted task names: push, reach
    rate = torch.tensor([(2 + 2 * 0.6) / (3 + 2), 0.6, (0 + 2 * 0.2) / (3 + 2), 0.2], dtype=torch.float64)
    assert torch.allclose(s.weights(), rate / rate.sum())
    # a start never seen weighs as its task; a task at the floor keeps a share above zero
    w = s.weights()
    assert w[1] > w[3] > 0 and w[0] > w[2] > 0


def test_draws_follow_the_weights():
    s = SignalStartSampler(TASKS)
    s.update(torch.tensor([2, 3] * 20), torch.zeros(40, dtype=torch.bool))  # push never carries signal
    draws = s.sample(4000, torch.Generator().manual_seed(0))
    push_share = sum(i >= 2 for i in draws) / len(draws)
    assert push_share == pytest.approx(s.task_shares()["push-v3"], abs=0.03)
    assert push_share < 0.1


def test_state_round_trips_and_bad_states_are_refused_naming_the_source():
    s = SignalStartSampler(TASKS)
    s.update(torch.tensor([0, 1, 1]), torch.tensor([True, False, True]))
    t = SignalStartSampler(TASKS)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert torch.equal(t.weights(), s.weights())
    with pytest.raises(ValueError, match="ckpt/x.json.*3 start states.*has 4"):
        t.load_state_dict({**s.state_dict(), "num_starts": 3}, source="ckpt/x.json")
    with pytest.raises(ValueError, match="kept ≤ seen"):
        t.load_state_dict({**s.state_dict(), "kept": [2.0, 0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="version"):
        t.load_state_dict({"seen": []})
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        s.update(torch.tensor([4]), torch.tensor([True]))
    with pytest.raises(ValueError, match="2 indices but 1"):
        s.update(torch.tensor([0, 1]), torch.tensor([True]))
    with pytest.raises(ValueError, match="prior_strength"):
        SignalStartSampler(TASKS, prior_strength=0.0)


def _reach_only_reward(*, actions, task_names, **kwargs) -> list[float]:
    """Spread inside reach groups only; push groups get a constant reward (no signal)."""
    first = actions[:, :, :, 0].mean(dim=(1, 2))
    return [float(v) if t == "reach-v3" else 0.0 for v, t in zip(first, task_names)]


class _SeedLog:
    """Wraps the fake real engine to record the seeds (start identities) of every rollout."""

    def __init__(self, engine):
        self._engine, self.world, self.seeds = engine, engine.world, []

    def rollout(self, policy, starts, group_size, temperature, horizon=None, seeds=None):
        self.seeds.append(seeds.tolist())
        return self._engine.rollout(policy, starts, group_size, temperature, horizon, seeds)


def _signal_trainer(out, max_steps, **kw):
    trainer = _trainer(
        out, max_steps=max_steps, reward=_reach_only_reward, start_sampling="signal", dynamic_sampling=True,
        max_resample_rounds=2, **kw,
    )  # fmt: skip
    trainer.imagination = _SeedLog(trainer.imagination)
    return trainer


def test_the_trainer_moves_starts_to_the_task_whose_groups_carry_signal(tmp_path):
    trainer = _signal_trainer(tmp_path, max_steps=12)
    trainer.train()
    seeds = trainer.imagination.seeds  # even seeds: reach, odd: push (tests' start states)
    sampler = trainer.start_sampler
    groups = sum(len(s) for s in seeds)
    assert sampler.seen.sum() == groups  # every group rolled out counted, dropped ones included
    reach_kept = sampler.kept[torch.tensor([0, 2, 4])].sum()
    assert sampler.kept.sum() == reach_kept  # only reach groups carried signal
    late = [x for s in seeds[len(seeds) // 2 :] for x in s]
    assert sum(x % 2 == 0 for x in late) / len(late) > 0.7  # uniform would give 0.5
    logged = [r for r in _rows(tmp_path) if "starts/share/reach-v3" in r]
    assert logged[-1]["starts/share/reach-v3"] > 0.8  # the next draw's mass sits on the task with signal
    assert all(r["starts/share/reach-v3"] + r["starts/share/push-v3"] == pytest.approx(1.0) for r in logged)


def test_the_sampler_state_is_checkpointed_and_a_resume_draws_what_an_uninterrupted_run_draws(tmp_path):
    full = _signal_trainer(tmp_path / "full", max_steps=3)
    full.train()
    run = _signal_trainer(tmp_path / "run", max_steps=3, save_strategy="steps", save_steps=1)
    run.train()
    assert run.imagination.seeds == full.imagination.seeds  # saving changes nothing
    resumed = _signal_trainer(tmp_path / "resumed", max_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    n_after = len(resumed.imagination.seeds)  # the rollouts of step 3 (one or two rounds)
    assert 1 <= n_after < len(full.imagination.seeds)
    assert resumed.imagination.seeds == full.imagination.seeds[-n_after:]  # drawn as if never interrupted
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "start_sampler.json").read_text())
    assert sum(saved["seen"]) == sum(len(s) for s in full.imagination.seeds[:-n_after])  # groups of steps 1-2
    assert torch.equal(resumed.start_sampler.seen, full.start_sampler.seen)
    assert torch.equal(resumed.start_sampler.kept, full.start_sampler.kept)


def test_a_resume_without_the_sampler_file_is_refused(tmp_path):
    run = _trainer(tmp_path / "run", max_steps=1, save_strategy="steps", save_steps=1, dynamic_sampling=False)
    run.train()
    resumed = _signal_trainer(tmp_path / "resumed", max_steps=2)
    with pytest.raises(ValueError, match="start_sampler.json"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))


def test_unknown_start_sampling_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="start_sampling"):
        GRPOWorldConfig(output_dir=str(tmp_path), start_sampling="greedy", use_cpu=True)
    with pytest.raises(ValueError, match="start_sampling_prior"):
        GRPOWorldConfig(output_dir=str(tmp_path), start_sampling="signal", start_sampling_prior=0, use_cpu=True)


# --------------------------------------------------------------------------- start_sampling='round_signal'
def test_group_signal_probability_is_the_beta_posterior_mean_of_a_mixed_group():
    from wlarl.trainer.start_sampling import group_signal_probability

    # 1 success in 1 episode: p ~ Beta(2, 1); E[p²] = 2/3 · 3/4 = 1/2, E[(1-p)²] = 1/3 · 2/4 = 1/6
    assert group_signal_probability(1, 1, 2) == pytest.approx(1 - 1 / 2 - 1 / 6)
    assert group_signal_probability(0, 0, 8) == pytest.approx(1 - 2 / 9)  # the prior: E[p^G] = 1 / (G + 1)
    mixed, solved, failed = (group_signal_probability(s, 32, 8) for s in (16, 32, 0))
    assert mixed > 0.98 and solved == pytest.approx(failed) and solved < 0.25
    assert group_signal_probability(8, 8, 8) > solved  # fewer episodes: less sure the task is saturated
    with pytest.raises(ValueError, match="group_size"):
        group_signal_probability(1, 2, 1)
    with pytest.raises(ValueError, match="3 of 2"):
        group_signal_probability(3, 2, 8)


def test_task_signal_weights_share_tasks_by_signal_and_split_them_evenly_among_their_starts():
    from wlarl.trainer.start_sampling import group_signal_probability, task_signal_weights

    tasks = ["reach-v3"] * 3 + ["push-v3"] + ["door-open-v3"] * 2
    probs, shares = task_signal_weights(tasks, {"reach-v3": (4, 8), "push-v3": (8, 8)}, 8)
    assert probs.sum().item() == pytest.approx(1.0)
    w = {t: group_signal_probability(*o, 8) for t, o in {"reach-v3": (4, 8), "push-v3": (8, 8)}.items()}
    w["door-open-v3"] = group_signal_probability(0, 0, 8)  # absent from the outcomes: the prior
    for t in w:
        assert shares[t] == pytest.approx(w[t] / sum(w.values()))
    assert probs[0] == probs[1] == probs[2] == pytest.approx(shares["reach-v3"] / 3)
    assert probs[3] == pytest.approx(shares["push-v3"])
    with pytest.raises(ValueError, match="no start states"):
        task_signal_weights([], {}, 8)


def test_round_signal_draws_starts_from_the_task_whose_real_groups_would_vary(tmp_path):
    trainer = _trainer(
        tmp_path, engine="imagined", max_steps=4, start_sampling="round_signal", rounds=1, round_episodes_per_task=1,
        dynamic_sampling=False,
    )  # fmt: skip
    engine, seen = trainer.imagination, []

    class _Log:  # the imagination engine, recording the seeds (start identities) of every rollout
        world = engine.world

        def rollout(self, policy, starts, *, seeds=None, **kw):
            seen.append(seeds.tolist())
            return engine.rollout(policy, starts, seeds=seeds, **kw)

    trainer.imagination = _Log()
    starts = list(trainer.train_dataset)  # tests' starts: even seeds reach-v3, odd seeds push-v3
    trainer.add_starts([{**s, "seed": 100 + s["seed"]} for s in starts])
    trainer.set_round_outcomes({"reach-v3": (16, 32), "push-v3": (32, 32)})  # push is saturated
    trainer.train()
    drawn = [x for s in seen for x in s]
    assert len(drawn) == 4 * trainer.args.num_starts
    reach = sum(x % 2 == 0 for x in drawn) / len(drawn)
    assert reach > 0.7  # at G = 4 the shares are 0.89 / 0.11; uniform would give 0.5
    logged = [r for r in _rows(tmp_path) if "starts/share/reach-v3" in r]
    assert logged and logged[-1]["starts/share/reach-v3"] == pytest.approx(0.8876, abs=1e-3)
    with pytest.raises(ValueError, match="successes ≤ episodes"):
        trainer.set_round_outcomes({"reach-v3": (3, 2)})


def test_round_signal_needs_rounds_and_rounds_refuse_per_start_sampling(tmp_path):
    with pytest.raises(ValueError, match="round_signal"):
        GRPOWorldConfig(output_dir=str(tmp_path), start_sampling="round_signal", use_cpu=True)
    with pytest.raises(ValueError, match="per-start counts"):
        GRPOWorldConfig(output_dir=str(tmp_path), start_sampling="signal", rounds=2, round_episodes_per_task=1,
                        max_steps=2, use_cpu=True)  # fmt: skip
    cfg = GRPOWorldConfig(output_dir=str(tmp_path), start_sampling="round_signal", rounds=2,
                          round_episodes_per_task=1, max_steps=2, use_cpu=True)  # fmt: skip
    assert cfg.start_sampling == "round_signal"
