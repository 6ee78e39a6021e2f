"""Evaluation/verification callbacks: schedules, logging through the trainer, keep-best restore, masking."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from wlarl.trainer.callbacks import (
    KeepBestRealCallback,
    RealEvalCallback,
    RefreshWorldCallback,
    VerifyCallback,
    classifier_success_probs,
    fires_at,
    mask_unverified,
    period_steps,
    success_confidence,
    trajectory_success_probs,
)
from wlarl.trainer.grpo_world_trainer import MetricsJsonlCallback
from wlarl.types import Trajectories


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": ((self.lin(x).squeeze(-1) - y) ** 2).mean()}


def _trainer(tmp_path, callbacks, max_steps=5):
    data = [{"x": torch.randn(2), "y": torch.tensor(1.0)} for _ in range(32)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        learning_rate=0.1,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=Tiny(), args=args, train_dataset=data, callbacks=[MetricsJsonlCallback(str(tmp_path)), *callbacks]
    )
    for cb in callbacks:  # what GRPOWorldTrainer does at construction
        if hasattr(cb, "bind"):
            cb.bind(trainer)
    return trainer


def test_fires_at():
    assert [s for s in range(0, 11) if fires_at(s, 3)] == [3, 6, 9]
    assert not any(fires_at(s, 0) for s in range(10))


def test_period_steps():
    assert period_steps(0, 100) == 0 and period_steps(None, 100) == 0
    assert period_steps(20, 100) == 20 and period_steps(0.25, 10) == 3 and period_steps(0.001, 10) == 1


def test_eval_schedule_and_metrics_reach_jsonl(tmp_path):
    calls = []

    def evaluator(policy, step):
        calls.append((step, policy.training))
        frames = torch.zeros(3, 8, 8, 3, dtype=torch.uint8).numpy()
        return {"eval/real_success": 0.5, "eval/reach-v3/success": 0.5, "videos": {"reach-v3_ep0": frames}}

    cb = RealEvalCallback(evaluator, eval_steps=2)
    trainer = _trainer(tmp_path, [cb], max_steps=5)
    trainer.train()
    assert [s for s, _ in calls] == [0, 2, 4, 5]  # start, every 2, end (5 was not yet evaluated)
    assert not any(training for _, training in calls)  # evaluated in eval mode
    assert trainer.model.training  # and restored afterwards
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    eval_rows = [r for r in rows if "eval/real_success" in r]
    assert [r["step"] for r in eval_rows] == [0, 2, 4, 5]
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert len(videos) == 4 and videos[0].startswith("eval_step000000_reach-v3_ep0")


def test_end_not_repeated_when_last_step_evaluated(tmp_path):
    steps = []
    cb = RealEvalCallback(lambda p, s: steps.append(s) or {"eval/real_success": 1.0}, eval_steps=2)
    _trainer(tmp_path, [cb], max_steps=4).train()
    assert steps == [0, 2, 4]


def test_failed_periodic_eval_is_reported_not_fatal(tmp_path):
    def evaluator(policy, step):
        if step == 2:
            raise RuntimeError("simulator exploded")
        return {"eval/real_success": 1.0}

    cb = RealEvalCallback(evaluator, eval_steps=2, at_end=False)
    trainer = _trainer(tmp_path, [cb], max_steps=3)
    trainer.train()
    assert dict(cb.history)[2] == {"eval/error": 1.0}
    # ... but a failure at train begin (misconfiguration) is raised.
    bad = RealEvalCallback(lambda p, s: 1 / 0, eval_steps=2)
    with pytest.raises(ZeroDivisionError):
        _trainer(tmp_path / "b", [bad], max_steps=1).train()


def test_unbound_callback_uses_log_fn():
    logged = []
    cb = RealEvalCallback(lambda p, s: {"eval/real_success": 0.25}, eval_steps=1, log_fn=logged.append)
    state = SimpleNamespace(global_step=3, is_world_process_zero=True, log_history=[])
    cb.on_step_end(SimpleNamespace(report_to=[]), state, None, model=Tiny())
    assert logged == [{"eval/real_success": 0.25}]


def test_keep_best_restores(tmp_path):
    model = Tiny()
    cb = KeepBestRealCallback(margin=0.1)
    with torch.no_grad():
        model.lin.weight.fill_(1.0)
    assert cb.update(model, 0.6, 10) == {"eval/best_real_success": 0.6, "eval/best_step": 10.0, "eval/restored": 0.0}
    with torch.no_grad():
        model.lin.weight.fill_(2.0)
    assert cb.update(model, 0.55, 20)["eval/restored"] == 0.0  # within the margin: keep training weights
    assert model.lin.weight.eq(2.0).all()
    out = cb.update(model, 0.3, 30)  # fell by 0.3 > 0.1: restore the step-10 weights
    assert out["eval/restored"] == 1.0 and out["eval/best_real_success"] == 0.6
    assert model.lin.weight.eq(1.0).all() and cb.restores == 1
    assert cb.update(model, float("nan"), 40) == {}


def test_keep_best_in_training_loop(tmp_path):
    values = iter([0.8, 0.2, 0.9])

    def evaluator(policy, step):
        return {"eval/real_success": next(values)}

    keep = KeepBestRealCallback(margin=0.1, save_best=True)
    ev = RealEvalCallback(evaluator, eval_steps=2, at_end=False)
    trainer = _trainer(tmp_path, [ev, keep], max_steps=4)
    first = {}

    orig = keep.update

    def spy(model, value, step, save=True):
        if step == 0:
            first.update({k: v.clone() for k, v in model.state_dict().items()})
        out = orig(model, value, step, save)
        if step == 2:  # 0.2 < 0.8 - 0.1: the step-0 weights are back
            assert out["eval/restored"] == 1.0
            assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
        return out

    keep.update = spy
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    restored = [r for r in rows if "eval/restored" in r]
    assert [(r["step"], r["eval/restored"], r["eval/best_real_success"]) for r in restored] == [
        (0, 0.0, 0.8),
        (2, 1.0, 0.8),
        (4, 0.0, 0.9),
    ]


def test_verification_sees_the_trained_policy_before_keep_best_restores(tmp_path):
    """At a step where evaluation triggers a restore, verification still measures the weights that were trained."""
    values = iter([0.8, 0.2])

    def flat(model):
        return torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    seen = {}

    def verifier(policy, step):
        seen[step] = flat(policy)
        return {"verify/imagination_gap": 0.0}

    ev = RealEvalCallback(lambda policy, step: {"eval/real_success": next(values)}, eval_steps=2, at_end=False)
    ver = VerifyCallback(verifier, verify_steps=2, at_start=True, at_end=False)
    keep = KeepBestRealCallback(margin=0.1)
    trainer = _trainer(tmp_path, [ev, ver, keep], max_steps=2)
    trainer.train()
    assert keep.restores == 1
    assert torch.equal(flat(trainer.model), seen[0])  # restored to the step-0 weights after the step-2 callbacks
    assert not torch.equal(seen[2], seen[0])  # ... but verification at step 2 measured the trained weights


def test_keep_best_state_survives_a_resume(tmp_path):
    """The best weights and value are saved with each checkpoint and restored when training resumes."""
    values = iter([0.8, 0.5, 0.75, 0.6])  # steps 0, 2 (run 1) and 2 (resume start), 4 (run 2)

    def make(max_steps):
        ev = RealEvalCallback(lambda policy, step: {"eval/real_success": next(values)}, eval_steps=2, at_end=False)
        keep = KeepBestRealCallback(margin=0.1)
        data = [{"x": torch.randn(2), "y": torch.tensor(1.0)} for _ in range(32)]
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=4, report_to=[], use_cpu=True,
            logging_steps=1, save_strategy="steps", save_steps=2, learning_rate=0.1, disable_tqdm=True,
        )  # fmt: skip
        torch.manual_seed(0)
        trainer = Trainer(model=Tiny(), args=args, train_dataset=data, callbacks=[ev, keep])
        for cb in (ev, keep):
            cb.bind(trainer)
        return trainer, keep

    first, keep1 = make(2)
    step0 = {}
    orig = keep1.update

    def spy(model, value, step, save=True):
        if step == 0:
            step0.update({k: v.clone() for k, v in model.state_dict().items()})
        return orig(model, value, step, save)

    keep1.update = spy
    first.train()
    assert keep1.restores == 1  # 0.5 at step 2 < 0.8 - 0.1
    info = json.loads((tmp_path / "checkpoint-2" / "keep_best.json").read_text())
    assert (info["best"], info["best_step"], info["restores"]) == (0.8, 0, 1)

    second, keep2 = make(4)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    # 0.75 at the resumed start is not a new best, because the step-0 best of 0.8 came back with the checkpoint;
    # 0.6 at step 4 then restores the step-0 weights of the first run.
    assert (keep2.best, keep2.best_step, keep2.restores) == (0.8, 0, 2)
    assert all(torch.equal(step0[k], v) for k, v in second.model.state_dict().items())


def test_mask_unverified():
    success = torch.tensor([True, True, False, True])
    probs = torch.tensor([0.95, 0.5, 0.99, 0.9])
    assert mask_unverified(success, probs, None, 0.2).tolist() == [True, True, False, True]
    assert mask_unverified(success, probs, 0.1, 0.2).tolist() == [True, True, False, True]
    assert mask_unverified(success, probs, float("nan"), 0.2).tolist() == [True, True, False, True]
    assert mask_unverified(success, probs, 0.5, 0.2, confidence=0.9).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="shape of success"):
        mask_unverified(success, probs[:2], 0.5, 0.2)


def test_verify_callback_sets_gap_and_success_filter(tmp_path):
    gaps = iter([0.5, 0.0])
    refreshed = []

    def verifier(policy, step):
        return {"verify/imagination_gap": next(gaps), "verify/agreement": 0.5}

    vcb = VerifyCallback(verifier, verify_steps=2, mask_unverified=True, mask_gap_threshold=0.2, at_end=False)

    def refresh(policy, step):
        assert torch.is_grad_enabled()  # a refresh trains, unlike evaluations
        refreshed.append(step)
        return {"verify/refresh_psnr_after": 20.0}

    rcb = RefreshWorldCallback(refresh, 2)
    trainer = _trainer(tmp_path, [vcb, rcb], max_steps=3)
    assert trainer.success_filter == vcb.success_filter
    traj = SimpleNamespace(
        success=torch.tensor([True, True]),
        success_logits=torch.tensor([[0.0, 5.0], [0.0, -5.0]]),
        alive=torch.tensor([[True, True], [True, False]]),
    )
    assert trajectory_success_probs(traj)[0] > 0.99 and trajectory_success_probs(traj)[1] == 0.5
    assert vcb.success_filter(traj).tolist() == [True, True]  # no gap measured yet
    trainer.train()
    assert vcb.imagination_gap == 0.5 and refreshed == [2]
    assert vcb.success_filter(traj).tolist() == [True, False]  # gap 0.5 > 0.2: the unconfident success is masked
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any(r.get("verify/masking_active") == 1.0 for r in rows)
    assert any(r.get("verify/refresh_psnr_after") == 20.0 and r["step"] == 2 for r in rows)
    assert math.isclose(vcb.last_metrics["verify/imagination_gap"], 0.5)


def test_wired_into_grpo_world_trainer(tmp_path):
    """Callbacks bound by GRPOWorldTrainer: metrics land in metrics.jsonl; masking changes counted successes."""
    from wla_tiny import tiny_obs, tiny_policy

    from rewards import RewardScorer
    from rollout.imagined import ImaginationEngine, freeze_snapshot
    from wlarl.configs import GRPOWorldConfig
    from wlarl.trainer import GRPOWorldTrainer

    obs = tiny_obs(4)
    starts = [
        {"image": obs.images[i].numpy(), "state": obs.states[i].numpy(), "instruction": obs.instructions[i],
         "task_name": obs.task_names[i], "seed": i}
        for i in range(4)
    ]  # fmt: skip
    policy = tiny_policy("gaussian").train()
    cfg = GRPOWorldConfig(
        output_dir=str(tmp_path), max_steps=2, num_starts=2, num_generations=2, horizon=2, logging_steps=1,
        report_to="none", reward_funcs=["r"], use_cpu=True, save_strategy="no", dynamic_sampling=False,
        # a threshold of 0.5 on a success probability of ~0.5 makes many imagined successes; confidence 0.9 masks them
        success_threshold=0.01, success_signal="head", world_aux_coef=0.0,
    )  # fmt: skip
    ev = RealEvalCallback(lambda p, s: {"eval/real_success": 0.5, "eval/timed_out": 0.0}, eval_steps=1)
    # the head decides success in this engine, so the classifier (here: unsure of every frame) is what confirms it
    ver = VerifyCallback(lambda p, s: {"verify/imagination_gap": 0.9}, verify_steps=1, mask_unverified=True,
                         mask_gap_threshold=0.2, at_start=True, success_signal="head",
                         success_classifier=lambda images, names: torch.full((len(images),), 0.5))  # fmt: skip
    keep = KeepBestRealCallback(margin=0.1)
    trainer = GRPOWorldTrainer(
        model=policy, args=cfg, train_dataset=starts,
        imagination=ImaginationEngine(freeze_snapshot(policy), horizon=2, success_threshold=0.01),
        reward_scorer=RewardScorer([lambda **kw: [0.0] * len(kw["task_names"])], names=["r"]), callbacks=[ev, ver, keep],
    )  # fmt: skip
    assert trainer.success_filter == ver.success_filter and ev.trainer is trainer and keep.trainer is trainer
    trainer.train()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "eval/real_success" in r] == [0, 1, 2]
    assert any("verify/imagination_gap" in r for r in rows) and any("eval/best_real_success" in r for r in rows)
    train_rows = [r for r in rows if r.get("rollout/imagined_success") is not None]
    assert train_rows and all(r["rollout/counted_success"] <= r["rollout/imagined_success"] for r in train_rows)
    assert any(r["rollout/counted_success"] < r["rollout/imagined_success"] for r in train_rows)


# ------------------------------------------------------------------------------------------- masking signals
def _hallucinated(with_classifier_probs=True):
    """3 hand-built imagined episodes (T = 3): row 0 "succeeds" at chunk 1 by the head only (the classifier says 0.1
    of that frame), row 1 at chunk 2 by both, row 2 never. Frame (n, t) has pixel value 10·n + t."""
    alive = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    logits = torch.tensor([[-5.0, 5.0, 5.0], [-5.0, -5.0, 5.0], [-5.0, -5.0, -5.0]])
    probs = torch.tensor([[0.0, 0.1, 0.9], [0.0, 0.2, 0.95], [0.0, 0.1, 0.3]])
    images = torch.stack([torch.stack([torch.full((4, 4, 3), 10 * n + t, dtype=torch.uint8) for t in range(3)])
                          for n in range(3)])  # fmt: skip
    return Trajectories(
        observations=[], samples=[], subgoal_images=images, subgoal_latents=torch.zeros(3, 3, 1, 1, 1),
        states=torch.zeros(3, 3, 2), success_logits=logits, alive=alive, success=torch.tensor([True, True, False]),
        instructions=["i"] * 3, task_names=["reach-v3", "push-v3", "reach-v3"], group_size=3,
        classifier_probs=probs if with_classifier_probs else None,
    )  # fmt: skip


def test_confidence_comes_from_the_signal_that_did_not_decide_success():
    traj = _hallucinated()
    head = trajectory_success_probs(traj)
    assert head[0] > 0.99 and head[1] > 0.99 and head[2] < 0.01  # the last counted chunks: 1, 2, 2
    assert torch.allclose(success_confidence(traj, "head"), torch.tensor([0.1, 0.95, 0.3]))
    assert torch.allclose(success_confidence(traj, "classifier"), head)
    assert torch.allclose(success_confidence(traj, "both"), torch.minimum(head, torch.tensor([0.1, 0.95, 0.3])))
    with pytest.raises(ValueError, match="success_signal"):
        success_confidence(traj, "oracle")


def test_classifier_runs_on_the_last_counted_frame_when_the_engine_did_not():
    seen = []

    def classifier(images, task_names):
        seen.append((images.clone(), list(task_names)))
        return images[:, 0, 0, 0].float() / 100  # frame (n, t) → (10·n + t) / 100

    traj = _hallucinated(with_classifier_probs=False)
    probs = classifier_success_probs(traj, classifier)
    assert torch.allclose(probs, torch.tensor([0.01, 0.12, 0.22]))  # frames (0, 1), (1, 2), (2, 2)
    assert seen[0][0].shape == (3, 4, 4, 3) and seen[0][1] == ["reach-v3", "push-v3", "reach-v3"]
    with pytest.raises(ValueError, match="no classifier_probs"):
        classifier_success_probs(traj)


def test_masking_does_not_ask_the_head_that_hallucinated():
    """Success decided by the head: while the gap is large, a success counts only if the classifier confirms it."""
    calls = []

    def classifier(images, task_names):
        calls.append(len(images))
        return torch.tensor([0.1, 0.95, 0.3])

    vcb = VerifyCallback(lambda p, s: {}, 1, mask_unverified=True, mask_gap_threshold=0.2, success_signal="head",
                         success_classifier=classifier)  # fmt: skip
    traj = _hallucinated(with_classifier_probs=False)
    assert vcb.success_filter(traj).tolist() == [True, True, False] and calls == []  # gap unknown: nothing asked
    vcb.imagination_gap = 0.5
    # The head is confident about both successes (> 0.99); the classifier rejects row 0's.
    assert vcb.success_filter(traj).tolist() == [False, True, False] and calls == [3]
    by_classifier = VerifyCallback(lambda p, s: {}, 1, mask_unverified=True, success_signal="classifier")
    by_classifier.imagination_gap = 0.5
    assert by_classifier.success_filter(traj).tolist() == [True, True, False]  # the head confirms both
    with pytest.raises(ValueError, match="success classifier"):
        VerifyCallback(lambda p, s: {}, 1, mask_unverified=True, success_signal="head")


def test_coevolution_rounds_run_at_begin_and_every_k_steps_and_add_their_starts(tmp_path):
    from wlarl.trainer.callbacks import CoevolutionCallback

    calls, added = [], []

    def round_fn(policy, round_index):
        calls.append((round_index, torch.is_grad_enabled()))
        return {"round/collected_success": 0.25, "starts": [{"round": round_index}] * 2, "real_episodes": 3,
                "real_env_steps": 30}  # fmt: skip

    cb = CoevolutionCallback(round_fn, steps_per_round=2, rounds=3)
    trainer = _trainer(tmp_path, [cb], max_steps=6)
    trainer.add_starts = added.extend  # what GRPOWorldTrainer.add_starts does with them
    budget = []
    trainer.count_real = lambda kind, episodes, steps: budget.append((kind, episodes, steps))
    trainer.train()
    assert calls == [(0, True), (1, True), (2, True)]  # steps 0, 2 and 4; never at the end (step 6)
    assert [s["round"] for s in added] == [0, 0, 1, 1, 2, 2]
    assert budget == [("train", 3, 30)] * 3  # the collected episodes are training episodes
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "round/collected_success" in r] == [0, 2, 4]


def test_a_resumed_coevolution_rebuilds_its_rounds_instead_of_running_one(tmp_path):
    from types import SimpleNamespace

    from wlarl.trainer.callbacks import CoevolutionCallback

    restored, added, outcomes = [], [], []
    cb = CoevolutionCallback(lambda p, r: pytest.fail("no new round at a resumed begin"), 2, 3, restore_fn=lambda d: (
        restored.append(d) or {"starts": [{"r": i} for i in range(d)], "task_outcomes": {"reach-v3": (d, 8)}}))  # fmt: skip
    cb.trainer = SimpleNamespace(add_starts=added.extend, set_round_outcomes=outcomes.append)
    cb.on_train_begin(SimpleNamespace(world_size=1), SimpleNamespace(global_step=3), None)
    assert restored == [2] and len(added) == 2  # rounds at steps 0 and 2 ran before the step-3 checkpoint
    assert outcomes == [{"reach-v3": (2, 8)}]  # the last restored round's outcomes reach the trainer
    cb.on_train_begin(SimpleNamespace(world_size=1), SimpleNamespace(global_step=4), None)
    assert restored[-1] == 3  # the round of step 4 ran before its checkpoint was written
    with pytest.raises(ValueError, match="one process"):
        cb.on_train_begin(SimpleNamespace(world_size=2), SimpleNamespace(global_step=0), None)
