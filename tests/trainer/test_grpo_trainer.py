"""GRPOWorldTrainer: a step trains the policy (not the frozen simulator), logs, checkpoints and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from wla_tiny import tiny_obs, tiny_policy  # noqa: E402

from rewards import RewardScorer  # noqa: E402
from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from wlarl.configs import GRPOWorldConfig  # noqa: E402
from wlarl.trainer import GRPOWorldTrainer  # noqa: E402


def _starts(n: int = 6) -> list[dict]:
    obs = tiny_obs(n)
    return [
        {"image": obs.images[i].numpy(), "state": obs.states[i].numpy(), "instruction": obs.instructions[i],
         "task_name": obs.task_names[i], "seed": i}
        for i in range(n)
    ]  # fmt: skip


def first_action_reward(*, actions, **kwargs) -> list[float]:
    """A dense reward with spread inside every group: prefer a large first action dimension."""
    return actions[:, :, :, 0].mean(dim=(1, 2)).tolist()


def _trainer(tmp_path, max_steps=2, policy=None, **overrides) -> GRPOWorldTrainer:
    policy = policy or tiny_policy("gaussian").train()
    snapshot = freeze_snapshot(policy)
    args = dict(
        output_dir=str(tmp_path), max_steps=max_steps, num_starts=2, num_generations=4, horizon=2,
        learning_rate=1e-2, save_steps=1, save_strategy="steps", logging_steps=1, report_to="none",
        reward_funcs=["first_action"], seed=0, log_image_steps=1, use_cpu=True,
    )  # fmt: skip
    args.update(overrides)
    cfg = GRPOWorldConfig(**args)
    return GRPOWorldTrainer(
        model=policy,
        args=cfg,
        train_dataset=_starts(),
        imagination=ImaginationEngine(snapshot, horizon=cfg.horizon),
        reward_scorer=RewardScorer([first_action_reward], names=["first_action"]),
    )


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_training_changes_policy_not_simulator_and_logs(tmp_path):
    trainer = _trainer(tmp_path)
    before, sim_before = _params(trainer.model), _params(trainer.imagination.world)
    trainer.train()
    after, sim_after = _params(trainer.model), _params(trainer.imagination.world)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for part in ("backbone", "meta_queries", "action"):
        assert any(part in k for k in changed), f"no parameter of {part} changed: {sorted(changed)[:5]}"
    assert not any("image_tokenizer" in k for k in changed), "the image tokenizer must stay frozen during GRPO"
    assert all(torch.equal(sim_before[k], sim_after[k]) for k in sim_before), "the frozen simulator changed"

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss/policy" in r]
    assert len(train_rows) == 2
    for key in ("rollout/imagined_success", "reward/first_action", "reward/total", "loss/policy", "time/imagine"):
        assert key in train_rows[0], key
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    assert list((tmp_path / "imagined").glob("step_*.png")), "no imagined rollout strip was written"


def test_first_update_is_on_policy(tmp_path):
    """With one update per batch the importance ratio of every chunk is 1: the update rescores what was sampled."""
    trainer = _trainer(tmp_path, max_steps=1, save_strategy="no", log_image_steps=0, num_iterations=1)
    trainer.train()
    row = next(
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "policy/ratio_min" in line
    )
    assert abs(row["policy/ratio_min"] - 1) < 1e-3 and abs(row["policy/ratio_max"] - 1) < 1e-3, row


def test_grpo_raises_the_reward_it_is_given(tmp_path):
    trainer = _trainer(tmp_path, max_steps=12, save_strategy="no", learning_rate=3e-2, log_image_steps=0)
    trainer.train()
    rewards = [json.loads(line)["reward/total"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if "reward/total" in line]  # fmt: skip
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4, rewards


def test_resume_restores_step_optimizer_and_rng(tmp_path):
    _trainer(tmp_path, max_steps=2).train()
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "trainer_state.json").is_file()
    resumed = _trainer(tmp_path, max_steps=3)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 3
    state = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_dynamic_sampling_keeps_only_informative_groups(tmp_path):
    # success threshold ~0 → every imagined episode succeeds at once → every group has success rate 1.0,
    # outside [0.1, 0.9]: nothing is kept and the trainer falls back to the first round.
    trainer = _trainer(
        tmp_path, max_steps=1, dynamic_sampling=True, dynamic_sampling_range=[0.1, 0.9], max_resample_rounds=2,
        success_threshold=1e-6, save_strategy="no",
    )  # fmt: skip
    trainer.imagination.success_threshold = 1e-6
    trainer.train()
    row = [
        json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss/policy" in line
    ][0]
    assert row["rollout/groups_seen"] == 4.0  # two rounds of B=2 groups
    assert row["rollout/imagined_success"] == 1.0


def test_dynamic_sampling_refills_the_batch_from_later_rounds(tmp_path):
    """Round 0 keeps group 0 only, round 1 keeps group 1 only: the batch is those two groups, in that order."""
    trainer = _trainer(
        tmp_path, max_steps=1, dynamic_sampling=True, dynamic_sampling_range=[0.1, 0.9], max_resample_rounds=3,
        success_threshold=1e-6, save_strategy="no",
    )  # fmt: skip
    trainer.imagination.success_threshold = 1e-6  # every imagined episode succeeds; the filter below decides
    patterns = iter(
        [[1, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 1, 0]]
    )  # G = 4: group rates (0.75, 1) then (1, 0.25)
    trainer.success_filter = lambda traj: torch.tensor(next(patterns), dtype=torch.bool)
    out = trainer._generate_and_score(trainer._sample_starts(2))
    assert out["success"].int().tolist() == [1, 0, 1, 1, 0, 0, 1, 0]
    assert out["trajectories"].num_rows == 8 and out["advantages"].shape == (8,)
    assert trainer._metrics["rollout/resample_rounds"][-1] == 2.0  # stopped once B groups were kept


def test_a_separate_kl_reference_stays_put_when_the_simulator_changes(tmp_path):
    policy = tiny_policy("gaussian").train()
    ref = freeze_snapshot(policy)
    trainer = _trainer(tmp_path, max_steps=1, policy=policy, beta=0.04, dynamic_sampling=False, save_strategy="no")
    trainer.ref_model = ref
    with torch.no_grad():  # what a World-Expert refresh does to the simulator's weights
        for p in trainer.imagination.world.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = trainer._generate_and_score(trainer._sample_starts(2))
    traj = out["trajectories"]
    want = trainer._flat_log_prob(ref, traj)["action"].view(traj.horizon, traj.num_rows).T
    moved = trainer._flat_log_prob(trainer.imagination.world, traj)["action"].view(traj.horizon, traj.num_rows).T
    torch.testing.assert_close(out["ref_logp"], want)
    assert not torch.allclose(out["ref_logp"], moved)


def test_world_aux_needs_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="world_aux_dataset"):
        _trainer(tmp_path, world_aux_coef=0.5)


def test_logs_reach_tensorboard_and_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = _trainer(tmp_path, max_steps=1, save_strategy="no", report_to=["tensorboard", "wandb"])
    trainer.train()
    import wandb

    wandb.finish()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/rollout/imagined_success" in acc.Tags()["scalars"]
    assert "rollout/imagined_strip" in acc.Tags()["images"]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run"
