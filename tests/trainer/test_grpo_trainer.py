"""GRPOWorldTrainer: a step trains the policy (not the frozen simulator), logs, checkpoints and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from wla_tiny import tiny_batch, tiny_obs, tiny_policy  # noqa: E402

from rewards import RewardScorer  # noqa: E402
from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from wlarl.algorithms import grpo  # noqa: E402
from wlarl.configs import GRPOWorldConfig  # noqa: E402
from wlarl.data import collate_windows  # noqa: E402
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


def real_windows(n: int = 16) -> list[dict]:
    """SFT windows of 'real' episodes (the world_aux loss trains the World Expert on them)."""
    batch = tiny_batch(n)
    return [{k: (v[i] if isinstance(v, list) else v[i].numpy()) for k, v in batch.items()} for i in range(n)]


def _trainer(tmp_path, max_steps=2, policy=None, reward=None, engine_kwargs=None, **overrides) -> GRPOWorldTrainer:
    policy = policy or tiny_policy("gaussian").train()
    snapshot = freeze_snapshot(policy)
    args = dict(
        output_dir=str(tmp_path), max_steps=max_steps, num_starts=2, num_generations=4, horizon=2,
        learning_rate=1e-2, save_steps=1, save_strategy="steps", logging_steps=1, report_to="none",
        reward_funcs=["first_action"], seed=0, log_image_steps=1, use_cpu=True, world_aux_coef=0.0,
    )  # fmt: skip
    args.update(overrides)
    cfg = GRPOWorldConfig(**args)
    return GRPOWorldTrainer(
        model=policy,
        args=cfg,
        train_dataset=_starts(),
        imagination=ImaginationEngine(snapshot, horizon=cfg.horizon, **(engine_kwargs or {})),
        reward_scorer=RewardScorer([reward or first_action_reward], names=["first_action"]),
        world_aux_dataset=real_windows() if cfg.world_aux_coef > 0 or cfg.bc_coef > 0 else None,
        world_aux_collate=collate_windows,
    )


def _rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


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


def test_dynamic_sampling_filters_on_the_reward_the_advantages_use(tmp_path):
    """Every imagined episode succeeds (threshold ~0), but the dense reward varies inside every group: the groups
    carry signal and are kept; a success-rate filter would have dropped them all."""
    trainer = _trainer(
        tmp_path, max_steps=1, dynamic_sampling=True, max_resample_rounds=2, save_strategy="no", log_image_steps=0,
        engine_kwargs={"success_threshold": 1e-6},
    )  # fmt: skip
    trainer.train()
    row = next(r for r in _rows(tmp_path) if "loss/policy" in r)
    assert row["rollout/imagined_success"] == 1.0
    assert row["rollout/kept_groups"] == 2.0 and row["rollout/resample_rounds"] == 1.0
    assert row["rollout/no_signal_step"] == 0.0


def test_a_step_without_signal_makes_no_update(tmp_path):
    """A constant reward leaves no group: the step logs it and the weights do not move (not even by momentum)."""
    trainer = _trainer(
        tmp_path, max_steps=2, reward=lambda *, actions, **kw: [1.0] * actions.shape[0], max_resample_rounds=2,
        save_strategy="no", log_image_steps=0, weight_decay=0.1,
    )  # fmt: skip
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a step without signal moved the weights"
    rows = [r for r in _rows(tmp_path) if "rollout/no_signal_step" in r]
    assert [r["rollout/no_signal_step"] for r in rows] == [1.0, 1.0]
    assert all(r["rollout/kept_groups"] == 0.0 for r in rows)


def test_refill_rounds_draw_new_starts(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, save_strategy="no")
    draws = [trainer._sample_starts(4, round_index=r)["seeds"].tolist() for r in range(3)]
    assert draws[0] != draws[1] and draws[1] != draws[2], draws
    assert trainer._sample_starts(4, round_index=1)["seeds"].tolist() == draws[1]  # seeded


def test_dynamic_sampling_refills_the_batch_from_later_rounds(tmp_path):
    """Round 0 keeps group 0 only, round 1 keeps group 1 only: the batch is those two groups, in that order."""
    values = iter([[0, 1, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 5, 6, 7, 8]])  # G = 4: (spread, flat), (flat, spread)
    trainer = _trainer(
        tmp_path, max_steps=1, reward=lambda **kw: next(values), max_resample_rounds=3, save_strategy="no"
    )
    out = trainer._generate_and_score(trainer._sample_starts(2))
    assert out["trajectories"].num_rows == 8 and out["advantages"].shape == (8,)
    torch.testing.assert_close(out["advantages"][4:], grpo.group_advantages(torch.tensor([5.0, 6, 7, 8]), 4))
    assert trainer._metrics["rollout/resample_rounds"][-1] == 2.0  # stopped once B groups were kept


def test_unverified_successes_lose_their_reward(tmp_path):
    """Successes that verification's masking does not trust are unscored: advantage 0 and out of the baseline."""
    trainer = _trainer(
        tmp_path, max_steps=1, dynamic_sampling=False, save_strategy="no", engine_kwargs={"success_threshold": 1e-6}
    )
    trainer.success_filter = lambda traj: torch.tensor([1, 0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    out = trainer._generate_and_score(trainer._sample_starts(2))
    assert out["success"].int().tolist() == [1, 0, 1, 1, 1, 1, 0, 1]
    assert out["advantages"][1] == 0 and out["advantages"][6] == 0
    reward = torch.tensor(first_action_reward(actions=out["trajectories"].actions))
    kept = torch.tensor([0, 2, 3])
    want = (reward[kept] - reward[kept].mean()) / (reward[kept].std() + 1e-4)
    torch.testing.assert_close(out["advantages"][kept], want, rtol=1e-4, atol=1e-5)
    assert trainer._metrics["rollout/unverified_successes"][-1] == 2.0


def test_solved_anchor_takes_the_first_row_of_every_all_success_group(tmp_path):
    """Group 0 has an unverified row, group 1 succeeds throughout: its first row (row 4) is the anchor, with the
    reference's mean chunk at its states (the reference is the policy itself before any step)."""
    trainer = _trainer(
        tmp_path, max_steps=1, dynamic_sampling=False, save_strategy="no", solved_anchor_coef=1.0,
        engine_kwargs={"success_threshold": 1e-6},
    )  # fmt: skip
    trainer.success_filter = lambda traj: torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool)
    out = trainer._generate_and_score(trainer._sample_starts(2))
    anchor = out["anchor_trajectories"]
    assert anchor.num_rows == 1
    torch.testing.assert_close(anchor.actions, out["trajectories"].actions[4:5])
    sampled_mean = torch.stack([s.extras["mean"] for s in anchor.samples], 0).flatten(0, 1)  # [T·1, H, A]
    torch.testing.assert_close(out["anchor_ref_mean"], sampled_mean, rtol=1e-4, atol=1e-5)
    assert trainer._metrics["rollout/solved_anchor_rows"][-1] == 1.0
    # no group solved: no anchor rows, and the loss has no anchor term
    trainer.success_filter = lambda traj: torch.tensor([0, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    out = trainer._generate_and_score(trainer._sample_starts(2))
    assert "anchor_trajectories" not in out and trainer._metrics["rollout/solved_anchor_rows"][-1] == 0.0


def test_solved_anchor_holds_tasks_the_latest_round_solved_in_reality(tmp_path):
    """No imagined row succeeds, but the latest co-evolution round solved one task in reality at ≥ hi (0.9): every
    group of that task is anchored (its first row), none of the other task's."""
    trainer = _trainer(
        tmp_path, max_steps=1, num_starts=6, seed=2, dynamic_sampling=False, save_strategy="no", solved_anchor_coef=1.0,
        engine_kwargs={"success_threshold": 1e-6},
    )  # fmt: skip
    trainer.success_filter = lambda traj: torch.zeros(traj.num_rows, dtype=torch.bool)
    for solved, outcomes in (("reach-v3", {"reach-v3": (29, 32), "push-v3": (28, 32)}),  # 0.906 ≥ 0.9 > 0.875
                             ("push-v3", {"reach-v3": (0, 32), "push-v3": (32, 32)})):  # fmt: skip
        trainer.set_round_outcomes(outcomes)
        out = trainer._generate_and_score(trainer._sample_starts(6))
        tasks = out["trajectories"].task_names[::4]
        assert {"reach-v3", "push-v3"} <= set(tasks), tasks  # both tasks drawn, so the selection is tested
        want = [4 * g for g, t in enumerate(tasks) if t == solved]
        anchor = out["anchor_trajectories"]
        assert anchor.task_names == [solved] * len(want)
        torch.testing.assert_close(anchor.actions, out["trajectories"].actions[want])


def test_solved_anchor_holds_the_mean_action_where_groups_all_succeed(tmp_path):
    """Every episode succeeds and the dense reward pushes the first action dimension up: with the anchor the mean
    action at those starts moves less from the reference than without it, and the term is logged."""

    def shift(trainer) -> float:
        obs, ref_model = tiny_obs(4), trainer.imagination.world
        with torch.no_grad():
            sample = ref_model.act(obs, sample=False)
            now = trainer.model.log_prob(obs, sample)["action_mean"]
            ref = ref_model.log_prob(obs, sample)["action_mean"]
        return float((now - ref).abs().mean())

    shifts = {}
    for coef in (0.0, 3.0):
        torch.manual_seed(0)
        out = tmp_path / f"anchor{coef}"
        trainer = _trainer(
            out, max_steps=4, save_strategy="no", log_image_steps=0, learning_rate=3e-2, solved_anchor_coef=coef,
            engine_kwargs={"success_threshold": 1e-6},
        )  # fmt: skip
        trainer.train()
        shifts[coef] = shift(trainer)
        logged = [r["loss/solved_anchor"] for r in _rows(out) if r.get("loss/solved_anchor") is not None]
        assert (len(logged) > 0) == (coef > 0)
    assert shifts[3.0] < 0.5 * shifts[0.0], shifts


def test_solved_anchor_needs_a_gaussian_head(tmp_path):
    trainer = _trainer(
        tmp_path, max_steps=1, policy=tiny_policy("flow").train(), dynamic_sampling=False, save_strategy="no",
        solved_anchor_coef=1.0, engine_kwargs={"success_threshold": 1e-6},
    )  # fmt: skip
    with pytest.raises(ValueError, match="gaussian action head"):
        trainer._generate_and_score(trainer._sample_starts(2))


def test_every_loss_option_reaches_the_loss(tmp_path, monkeypatch):
    seen = {}
    real = grpo.policy_loss

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo, "policy_loss", spy)
    trainer = _trainer(
        tmp_path, max_steps=1, save_strategy="no", log_image_steps=0, loss_type="dapo", delta=1.5,
        importance_sampling_level="sequence", max_completion_length=7, beta=0.01, epsilon=0.1, epsilon_high=0.3,
    )  # fmt: skip
    trainer.train()
    assert seen["delta"] == 1.5 and seen["importance_sampling_level"] == "sequence"
    assert seen["max_completion_length"] == 7 and seen["beta"] == 0.01
    assert seen["epsilon_low"] == 0.1 and seen["epsilon_high"] == 0.3 and seen["loss_type"] == "dapo"
    # dapo normalises by the loss tokens of the whole batch: N rows × (T action + T subtask tokens) that ran
    assert 0 < seen["num_items"] <= 8 * 2 * 2


def test_subtask_tokens_train_with_the_trajectory_and_are_anchored(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, save_strategy="no", log_image_steps=0)
    assert trainer.args.subtask_coef > 0 and trainer.args.subtask_beta > 0  # on by default
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    assert not torch.equal(before["subtask_head.weight"], after["subtask_head.weight"])
    row = next(r for r in _rows(tmp_path) if "loss/policy" in r)
    assert row["loss/subtask_kl"] is not None and row["loss/subtask_kl"] >= 0
    assert row["policy/mean_shift"] is not None and row["policy/action_std"] > 0


def test_a_grpo_checkpoint_serves_test_time_scaling_and_the_next_simulator(tmp_path):
    """With world_aux_coef the World Expert keeps modelling real windows while GRPO moves the backbone, so the saved
    policy still imagines well enough for test-time scaling and as the next run's simulator."""
    from wlarl.models.wla import WLAPolicy

    def world_error(model) -> float:
        with torch.no_grad():
            return float(model.world_loss(model.sft_losses(collate_windows(real_windows()))))

    errors = {}
    for coef in (0.0, 1.0):
        policy = tiny_policy("gaussian").train()
        for p in policy.world_expert.parameters():  # a World Expert that already models the windows a little
            p.data.mul_(0.5)
        errors["before"] = world_error(policy)
        out = tmp_path / f"aux{coef}"
        trainer = _trainer(out, max_steps=6, policy=policy, world_aux_coef=coef, save_strategy="no",
                           log_image_steps=0, learning_rate=3e-2)  # fmt: skip
        trainer.train()
        trainer.save_model(str(out / "final"))
        errors[coef] = world_error(trainer.model)
    assert errors[1.0] < errors[0.0], errors  # the anchor keeps the World Expert consistent with its backbone
    assert errors[1.0] < errors["before"], errors

    loaded = WLAPolicy.from_pretrained(tmp_path / "aux1.0" / "final")
    obs = tiny_obs(2)
    best = loaded.act(obs, num_candidates=4)  # test-time scaling imagines 4 chunks per row with the World Expert
    assert best.extras["tts_scores"].shape == (2, 4) and torch.isfinite(best.extras["tts_scores"]).all()
    traj = ImaginationEngine(freeze_snapshot(loaded), horizon=2).rollout(loaded, obs, group_size=2)
    assert traj.num_rows == 4 and torch.isfinite(traj.subgoal_latents).all()


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


def test_bc_coef_keeps_the_action_expert_near_the_demonstrations(tmp_path):
    """bc_coef adds the Action Expert's SFT loss on the real windows: after the same GRPO steps its action loss on
    those windows is lower than without it, and the term is logged."""

    def action_error(model) -> float:
        with torch.no_grad():
            return float(model.sft_losses(collate_windows(real_windows()))["loss/action_mse"])

    errors = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        out = tmp_path / f"bc{coef}"
        trainer = _trainer(out, max_steps=4, policy=tiny_policy("gaussian").train(), bc_coef=coef,
                           save_strategy="no", log_image_steps=0, learning_rate=3e-2)  # fmt: skip
        trainer.train()
        errors[coef] = action_error(trainer.model)
        logged = [r["loss/bc"] for r in _rows(out) if r.get("loss/bc") is not None]
        assert (len(logged) > 0) == (coef > 0)
    assert errors[1.0] < errors[0.0], errors


def test_world_aux_needs_a_dataset(tmp_path):
    cfg = GRPOWorldConfig(output_dir=str(tmp_path), num_starts=2, num_generations=2, world_aux_coef=0.5)
    with pytest.raises(ValueError, match="world_aux_dataset"):
        GRPOWorldTrainer(
            model=tiny_policy(), args=cfg, train_dataset=_starts(), imagination=None, reward_scorer=lambda *a: None
        )
    cfg = GRPOWorldConfig(output_dir=str(tmp_path), num_starts=2, num_generations=2, world_aux_coef=0.0, bc_coef=0.5)
    with pytest.raises(ValueError, match="bc_coef > 0"):
        GRPOWorldTrainer(
            model=tiny_policy(), args=cfg, train_dataset=_starts(), imagination=None, reward_scorer=lambda *a: None
        )


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


def test_a_policy_loaded_in_eval_mode_reuses_each_rollout_num_iterations_times(tmp_path):
    """from_pretrained hands the trainer a policy in eval mode: the first rollout must still be buffered, so that
    with num_iterations 2 the rollouts happen at steps 1, 3, 5 (not 1, 2, 3, 5)."""
    policy = tiny_policy("gaussian").eval()
    trainer = _trainer(tmp_path, policy=policy, max_steps=6, save_strategy="no", log_image_steps=0, num_iterations=2)
    calls = []
    rollout = trainer.imagination.rollout
    trainer.imagination.rollout = lambda *a, **k: calls.append(trainer.state.global_step) or rollout(*a, **k)
    trainer.train()
    assert calls == [0, 2, 4]  # global_step before the optimizer steps 1, 3 and 5


def test_gradient_accumulation_keeps_one_rollout_per_micro_step(tmp_path):
    """With 2 micro-steps per optimizer step and num_iterations 2, the two rollouts of step 1 (from different starts)
    are both trained on again in step 2, each at its own micro-step, and no other rollout happens."""
    trainer = _trainer(
        tmp_path, max_steps=2, save_strategy="no", log_image_steps=0, num_iterations=2, gradient_accumulation_steps=2
    )
    made, used = [], []
    generate, loss = trainer._generate_and_score, trainer.compute_loss
    trainer._generate_and_score = lambda inputs: made.append(generate(inputs)) or made[-1]
    trainer.compute_loss = lambda model, inputs, *a, **k: used.append(id(inputs)) or loss(model, inputs, *a, **k)
    trainer.train()
    assert len(made) == 2 and trainer.state.global_step == 2
    assert used == [id(made[0]), id(made[1]), id(made[0]), id(made[1])]


def test_gradient_accumulation_micro_steps_draw_their_own_starts(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, save_strategy="no", gradient_accumulation_steps=2)
    first = trainer._sample_starts(8)["index"]
    trainer._step = 1  # the second micro-step of the same optimizer step
    assert not torch.equal(first, trainer._sample_starts(8)["index"])
    trainer._step = 2  # the first micro-step of the next one: the same global step gives the same draw
    assert torch.equal(first, trainer._sample_starts(8)["index"])
