"""The trainer's real-interaction budget: real-engine rollouts count as training episodes (kept or dropped), evaluators
as evaluation, checkpoints carry the counts and resumes continue them; the engine settings of the config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_grpo_trainer import _rows, _starts, first_action_reward
from wla_tiny import tiny_policy

from rewards import RewardScorer
from rollout.imagined import ImaginationEngine, freeze_snapshot
from wlarl.configs import GRPOWorldConfig
from wlarl.trainer import GRPOWorldTrainer
from wlarl.trainer.callbacks import RealEvalCallback, VerifyCallback

B, G = 2, 4


class FakeRealEngine:
    """Imagination dressed as real rollouts: `engine` "real" and `env_steps` [N] = 5 · chunks run (+ row index, so
    that the sum says which rows were counted). Records every trajectory it hands out."""

    def __init__(self, world: torch.nn.Module, horizon: int = 2):
        self.world = world
        self._imagine = ImaginationEngine(world, horizon=horizon)
        self.handed: list = []
        self.horizons: list = []
        self.last_timing = {"policy": 0.25}

    def rollout(self, policy, starts, group_size, temperature, horizon=None, seeds=None):
        self.horizons.append(horizon)
        traj = self._imagine.rollout(policy, starts, group_size=group_size, temperature=temperature)
        steps = 5 * traj.alive.sum(1) + torch.arange(traj.num_rows)
        traj = dataclasses.replace(traj, env_steps=steps.long(), engine="real")
        self.handed.append(traj)
        return traj


def _trainer(out, engine: str = "real", max_steps: int = 2, callbacks=None, reward=None, **overrides):
    policy = tiny_policy("gaussian").train()
    world = freeze_snapshot(policy)
    args = dict(
        output_dir=str(out), max_steps=max_steps, num_starts=B, num_generations=G, horizon=2, learning_rate=1e-2,
        save_strategy="no", logging_steps=1, report_to="none", reward_funcs=["first_action"], seed=0,
        log_image_steps=0, use_cpu=True, world_aux_coef=0.0, engine=engine, disable_tqdm=True,
    )  # fmt: skip
    if engine == "real":
        args.update(start_states="reset", tasks=["reach-v3"])
    args.update(overrides)
    cfg = GRPOWorldConfig(**args)
    imagination = FakeRealEngine(world) if engine == "real" else ImaginationEngine(world, horizon=2)
    return GRPOWorldTrainer(
        model=policy,
        args=cfg,
        train_dataset=_starts(),
        imagination=imagination,
        reward_scorer=RewardScorer([reward or first_action_reward], names=["first_action"]),
        callbacks=callbacks,
    )


def _train_rows(out) -> list[dict]:
    return [r for r in _rows(out) if "loss/policy" in r or "rollout/no_signal_step" in r]


def test_real_rollouts_count_as_training_episodes_and_env_steps(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3, dynamic_sampling=False)
    trainer.train()
    engine = trainer.imagination
    assert len(engine.handed) == 3 and all(t.num_rows == B * G for t in engine.handed)
    assert engine.horizons == [None] * 3  # the real engine's own horizon (from real_max_episode_steps)
    rows = _train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    steps_so_far = 0
    for k, (row, traj) in enumerate(zip(rows, engine.handed), start=1):
        steps_so_far += int(traj.env_steps.sum())
        assert row["budget/real_train_episodes"] == k * B * G
        assert row["budget/real_train_env_steps"] == steps_so_far
        assert row["budget/real_eval_episodes"] == row["budget/real_eval_env_steps"] == 0
        assert "rollout/real_success" in row and "rollout/imagined_success" not in row
        assert row["time/real_policy"] == 0.25
    assert trainer.budget == {
        "real_train_episodes": 3 * B * G, "real_train_env_steps": steps_so_far,
        "real_eval_episodes": 0, "real_eval_env_steps": 0,
    }  # fmt: skip


def test_dropped_groups_of_dynamic_sampling_count_too(tmp_path):
    """A constant reward leaves no group with signal: every round is dropped, and every round's rows were real."""
    trainer = _trainer(
        tmp_path, max_steps=2, dynamic_sampling=True, max_resample_rounds=3,
        reward=lambda *, actions, **kw: [1.0] * actions.shape[0],
    )  # fmt: skip
    trainer.train()
    engine = trainer.imagination
    assert len(engine.handed) == 2 * 3  # 3 rounds per step
    rows = _train_rows(tmp_path)
    assert [r["rollout/resample_rounds"] for r in rows] == [3.0, 3.0]
    assert [r["rollout/kept_groups"] for r in rows] == [0.0, 0.0]
    assert [r["budget/real_train_episodes"] for r in rows] == [1 * B * G * 3, 2 * B * G * 3]
    assert trainer.budget["real_train_env_steps"] == sum(int(t.env_steps.sum()) for t in engine.handed)
    # the success rate of every row of every round, not only of the (here: no) kept groups
    for k, row in enumerate(rows):
        handed = engine.handed[3 * k : 3 * k + 3]
        expected = sum(float(t.success.float().mean()) for t in handed) / 3
        assert row["rollout/real_success_all_rows"] == pytest.approx(expected)


def test_imagined_rollouts_cost_no_real_episodes(tmp_path):
    trainer = _trainer(tmp_path, engine="imagined", max_steps=1)
    trainer.train()
    row = _train_rows(tmp_path)[0]
    assert row["budget/real_train_episodes"] == row["budget/real_train_env_steps"] == 0.0


def test_an_evaluator_adds_to_the_eval_budget_only(tmp_path):
    calls = []

    def evaluator(policy, step):
        calls.append(step)
        return {"eval/real_success": 0.5, "real_episodes": 5, "real_env_steps": 50}

    cb = RealEvalCallback(evaluator, eval_steps=1)
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[cb], dynamic_sampling=False)
    trainer.train()
    assert calls == [0, 1, 2]  # start, every step (the end was evaluated already)
    assert trainer.budget["real_eval_episodes"] == 5 * 3 and trainer.budget["real_eval_env_steps"] == 50 * 3
    assert trainer.budget["real_train_episodes"] == 2 * B * G  # the real engine's rollouts only
    eval_rows = [r for r in _rows(tmp_path) if "eval/real_success" in r]
    assert [r["eval/real_episodes_used"] for r in eval_rows] == [5.0, 5.0, 5.0]
    assert [r["budget/real_eval_episodes"] for r in eval_rows] == [5.0, 10.0, 15.0]
    assert "real_episodes" not in eval_rows[0]  # popped from the metrics, logged as eval/real_episodes_used


def test_verification_episodes_count_as_training_data_when_asked(tmp_path):
    def verifier(policy, step):
        return {"verify/imagination_gap": 0.0, "real_episodes": 4, "real_env_steps": 40}

    as_eval = VerifyCallback(verifier, verify_steps=1)
    trainer = _trainer(tmp_path / "eval", engine="imagined", max_steps=2, callbacks=[as_eval])
    trainer.train()
    assert trainer.budget == {
        "real_train_episodes": 0, "real_train_env_steps": 0, "real_eval_episodes": 8, "real_eval_env_steps": 80,
    }  # fmt: skip
    as_train = VerifyCallback(verifier, verify_steps=1, episodes_train=True)
    trainer = _trainer(tmp_path / "train", engine="imagined", max_steps=2, callbacks=[as_train])
    trainer.train()
    assert trainer.budget == {
        "real_train_episodes": 8, "real_train_env_steps": 80, "real_eval_episodes": 0, "real_eval_env_steps": 0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="kind"):
        trainer.count_real("test", 1, 1)


def test_checkpoints_carry_the_budget_and_a_resume_continues_it(tmp_path):
    run = tmp_path / "run"
    first = _trainer(run, max_steps=2, save_strategy="steps", save_steps=1, dynamic_sampling=False)
    first.train()
    saved = {s: json.loads((run / f"checkpoint-{s}" / "real_budget.json").read_text()) for s in (1, 2)}
    per_step = [int(t.env_steps.sum()) for t in first.imagination.handed]
    assert saved[1]["real_train_episodes"] == B * G and saved[2]["real_train_episodes"] == 2 * B * G
    assert saved[1]["real_train_env_steps"] == per_step[0] and saved[2]["real_train_env_steps"] == sum(per_step)
    assert saved[2] == first.budget
    resumed = _trainer(tmp_path / "resumed", max_steps=3, dynamic_sampling=False)
    resumed.train(resume_from_checkpoint=str(run / "checkpoint-1"))
    assert resumed.state.global_step == 3 and len(resumed.imagination.handed) == 2  # steps 2 and 3
    assert resumed.budget["real_train_episodes"] == 3 * B * G  # continued from checkpoint-1, not restarted
    assert resumed.budget["real_train_env_steps"] == per_step[0] + sum(
        int(t.env_steps.sum()) for t in resumed.imagination.handed
    )
    rows = _train_rows(tmp_path / "resumed")
    assert [(r["step"], r["budget/real_train_episodes"]) for r in rows] == [(2, 2 * B * G), (3, 3 * B * G)]


@pytest.mark.parametrize(
    "content", [json.dumps({"real_train_episodes": 3}), json.dumps({k: "7" for k in (
        "real_train_episodes", "real_train_env_steps", "real_eval_episodes", "real_eval_env_steps")}), '{"real_tr',
        "[8, 68, 0, 0]"],
    ids=["missing-keys", "not-integers", "not-json", "not-an-object"],
)  # fmt: skip
def test_a_damaged_budget_file_is_refused_naming_it(tmp_path, content):
    ckpt = tmp_path / "run" / "checkpoint-1"  # the budget is read before anything else of the checkpoint
    ckpt.mkdir(parents=True)
    (ckpt / "real_budget.json").write_text(content)
    resumed = _trainer(tmp_path / "resumed", max_steps=2, dynamic_sampling=False)
    with pytest.raises(ValueError, match=r"checkpoint-1/real_budget\.json"):
        resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.budget["real_train_episodes"] == 0


# ----------------------------------------------------------------------------------------- config
def _cfg(tmp_path, **kwargs) -> GRPOWorldConfig:
    return GRPOWorldConfig(output_dir=str(tmp_path), num_starts=2, num_generations=2, use_cpu=True, **kwargs)


def test_start_states_auto_follow_the_engine(tmp_path):
    assert _cfg(tmp_path).start_states == "dataset" and _cfg(tmp_path).engine == "imagined"
    real = _cfg(tmp_path, engine="real")
    assert real.start_states == "reset" and real.real_max_episode_steps == 150
    assert _cfg(tmp_path, engine="real", start_states="reset", tasks=["reach-v3"]).start_states == "reset"
    assert _cfg(tmp_path, start_states="keyframes").start_states == "keyframes"  # imagination rebuilds any frame
    assert _cfg(tmp_path, env_slots_per_worker=3).env_slots_per_worker == 3


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"engine": "real", "start_states": "keyframes"}, "start_states"),
        ({"engine": "real", "start_states": "dataset"}, "start_states"),
        ({"engine": "real", "refresh_world_steps": 2, "verify_steps": 1}, "refresh_world_steps"),
        ({"engine": "real", "mask_unverified": True, "verify_steps": 1}, "mask_unverified"),
        ({"engine": "sim"}, "engine"),
        ({"engine": "real", "real_max_episode_steps": 0}, "real_max_episode_steps"),
        ({"env_slots_per_worker": 0}, "env_slots_per_worker"),
    ],
)
def test_engine_settings_that_cannot_work_raise_naming_the_field(tmp_path, kwargs, field_name):
    with pytest.raises(ValueError, match=rf"GRPOWorldConfig\.{field_name}:"):
        _cfg(tmp_path, **kwargs)
    if kwargs.get("engine") == "real" and len(kwargs) > 1 and "real_max_episode_steps" not in kwargs:
        _cfg(tmp_path, **{**kwargs, "engine": "imagined"})  # the same setting is fine in imagination
