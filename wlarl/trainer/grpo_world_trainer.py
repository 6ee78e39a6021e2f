"""GRPO inside the policy's own World Expert, on `transformers.Trainer` (built the way TRL's GRPOTrainer is).

One training step reads top to bottom in `_prepare_inputs` and `compute_loss`:

    starts → imagine (B·G rows, frozen World Expert) → score (reward functions) → advantages → update → log

The train dataset is a list of start states. `wlarl` never imports `rollout` or `rewards`: the recipe hands
the trainer an imagination engine (`rollout.imagined.ImaginationEngine`) and a reward scorer
(`rewards.RewardScorer`), both plain objects with one method each.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import Trainer, TrainerCallback

from wlarl.algorithms import grpo
from wlarl.configs import GRPOWorldConfig
from wlarl.trainer.start_sampling import SignalStartSampler, task_signal_weights
from wlarl.types import ActionSample, Observation, RewardOutput, Trajectories


class ImaginationEngineLike(Protocol):
    """What the trainer needs from a rollout engine: `rollout.imagined.ImaginationEngine` (the frozen World Expert)
    or `rollout.real_engine.RealEngine` (the real simulator). `world` is the frozen snapshot, the KL reference."""

    world: torch.nn.Module

    def rollout(
        self,
        policy: torch.nn.Module,
        starts: Observation,
        group_size: int,
        temperature: float,
        horizon: int | None,
        seeds: torch.Tensor | None = None,
    ) -> Trajectories: ...


BUDGET_KEYS = ("real_train_episodes", "real_train_env_steps", "real_eval_episodes", "real_eval_env_steps")
BUDGET_FILE = "real_budget.json"
START_SAMPLER_FILE = "start_sampler.json"


RewardScorerLike = Callable[..., RewardOutput]


def _write_json_atomic(path: str, obj: Any) -> None:
    """`obj` as JSON at `path`, written to a temporary file first so that a crash leaves no partial file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _read_json(path: str, expected: str = "") -> Any:
    """JSON from `path`; a damaged file is a ValueError naming it (and what was `expected`)."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})" + (f"; expected {expected}" if expected else "")) from None


def collate_starts(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Start-state dicts → ``{"observation": Observation [B], "seeds": long [B]}``."""
    return {
        "observation": Observation.from_dicts(items),
        "seeds": torch.as_tensor([int(it.get("seed", -1)) for it in items], dtype=torch.long),
    }


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log (one JSON object per logged step) to `output_dir/metrics.jsonl` on the main process."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "metrics.jsonl")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        row = {"step": state.global_step}
        for k, v in logs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            row[k] = v
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class GRPOWorldTrainer(Trainer):
    """GRPO for a WLA policy, imagining with a frozen snapshot of its own World Expert.

    Args:
        model: the WLA policy being trained (a `WLAPolicy`).
        args: `GRPOWorldConfig`.
        train_dataset: start states, a sequence of dicts (image, state, instruction, task_name, seed) — e.g.
            `wlarl.data.start_states(dataset)`.
        imagination: an engine with `rollout(policy, starts, group_size, temperature, horizon) -> Trajectories`
            and a `.world` attribute: the frozen snapshot, also the KL reference.
        reward_scorer: callable `(trajectories, trainer_state=...) -> RewardOutput`.
        world_aux_dataset: optional SFT windows of real episodes for the `world_aux_coef` and `bc_coef` losses.
        world_aux_collate: collate function for `world_aux_dataset`.
        processing_class: the policy's processor, saved with every checkpoint.
        callbacks: extra `TrainerCallback`s (real evaluation, verification, …).
        ref_model: frozen KL reference (used when `beta` > 0); default `imagination.world`. Give a separate frozen
            copy when the simulator is refreshed during training (`refresh_world_steps`), so that a refresh does not
            move the reference too.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: GRPOWorldConfig,
        train_dataset: Sequence[dict[str, Any]],
        imagination: ImaginationEngineLike,
        reward_scorer: RewardScorerLike,
        world_aux_dataset: Any | None = None,
        world_aux_collate: Callable | None = None,
        processing_class: Any | None = None,
        callbacks: list[TrainerCallback] | None = None,
        ref_model: torch.nn.Module | None = None,
    ):
        if not isinstance(args, GRPOWorldConfig):
            raise TypeError(f"GRPOWorldTrainer: args must be a GRPOWorldConfig, got {type(args).__name__}")
        if len(train_dataset) == 0:
            raise ValueError("GRPOWorldTrainer: train_dataset (start states) is empty")
        if (args.world_aux_coef > 0 or args.bc_coef > 0) and world_aux_dataset is None:
            raise ValueError(
                "GRPOWorldTrainer: world_aux_coef > 0 or bc_coef > 0 needs world_aux_dataset (SFT windows of real "
                "episodes)"
            )
        # The image tokenizer stays fixed during GRPO: imagined latents from the frozen snapshot must keep
        # meaning the same thing to the policy.
        tokenizer_module = getattr(model, "image_tokenizer", None)
        if tokenizer_module is not None:
            for p in tokenizer_module.parameters():
                p.requires_grad_(False)
        callbacks = [MetricsJsonlCallback(args.output_dir), *(callbacks or [])]
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=collate_starts,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        self.imagination = imagination
        self.ref_model = ref_model
        # The frozen simulator and reference live where the policy trains (a no-op on a CPU).
        for frozen in (getattr(imagination, "world", None), ref_model):
            if isinstance(frozen, torch.nn.Module):
                frozen.to(self.args.device)
        self.reward_scorer = reward_scorer
        self.world_aux_dataset = world_aux_dataset
        self.world_aux_collate = world_aux_collate
        self._world_aux_step, self._world_aux_draws = -1, 0  # see _world_aux_batch
        # Every loss option of the config reaches `grpo.policy_loss` through this one dict.
        self._loss_kwargs = {
            "loss_type": args.loss_type,
            "epsilon_low": args.epsilon,
            "epsilon_high": args.epsilon_high,
            "delta": args.delta,
            "importance_sampling_level": args.importance_sampling_level,
            "max_completion_length": args.max_completion_length,
            "beta": args.beta,
        }
        self._metrics: dict[str, list[float]] = defaultdict(list)
        # Real interaction so far (every process holds the global counts): training episodes (real-engine rollouts,
        # refresh collection) apart from evaluation episodes (evaluation, verification). Saved with checkpoints.
        self.budget: dict[str, int] = dict.fromkeys(BUDGET_KEYS, 0)
        self._round_real = [0, 0]  # this process's real episodes and env steps in the current step's rounds
        self._buffered_inputs: list[dict[str, Any] | None] = [None] * self.args.gradient_accumulation_steps
        self._step = 0
        self._draws_starts = False  # set by add_starts
        # Masks imagined successes that verification does not trust (set by the verification callback).
        self.success_filter: Callable[[Trajectories], torch.Tensor] | None = None
        self.resumed_from: str | None = None  # the checkpoint `train` resumed from
        # start_sampling='signal': where groups carried signal so far (every process holds the same counts)
        self.start_sampler: SignalStartSampler | None = None
        # start_sampling='round_signal': {task: (successes, episodes)} of the latest co-evolution round, and a cache of
        # the start probabilities [S] and task shares they give (cleared when the starts or the outcomes change)
        self._round_outcomes: dict[str, tuple[int, int]] | None = None
        self._round_draw: tuple[torch.Tensor, dict[str, float]] | None = None
        if args.start_sampling == "signal":
            tasks = [str(train_dataset[i].get("task_name", "")) for i in range(len(train_dataset))]
            self.start_sampler = SignalStartSampler(tasks, prior_strength=args.start_sampling_prior)
        for cb in self.callback_handler.callbacks:
            if hasattr(cb, "bind"):
                cb.bind(self)

    # ------------------------------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["image", "state", "instruction", "task_name", "seed"]

    def get_train_dataloader(self) -> DataLoader:
        """B = `num_starts` start states per process and step, drawn with replacement (seeded per rank)."""
        gen = torch.Generator().manual_seed(self.args.seed + 1000 * self.args.process_index)
        total = self.args.num_starts * max(self.args.max_steps, 1) * self.args.num_iterations
        sampler = RandomSampler(self.train_dataset, replacement=True, num_samples=total, generator=gen)
        return DataLoader(
            self.train_dataset,
            batch_size=self.args.num_starts,
            sampler=sampler,
            collate_fn=collate_starts,
            drop_last=True,
            num_workers=0,
        )

    def add_starts(self, starts: Sequence[dict[str, Any]]) -> None:
        """Add start states (e.g. branch points of a co-evolution round's real episodes). From then on every batch's
        starts are drawn uniformly from all of them by the trainer (seeded by step), not by the dataloader."""
        if self.start_sampler is not None:
            raise ValueError("add_starts: start_sampling='signal' keeps per-start statistics of a fixed set of starts")
        if not isinstance(self.train_dataset, list):
            self.train_dataset = list(self.train_dataset)
        self.train_dataset.extend(starts)
        self._draws_starts = True
        self._round_draw = None

    def set_round_outcomes(self, outcomes: dict[str, tuple[int, int]]) -> None:
        """The current policy's real outcomes per task, ``{task: (successes, episodes)}`` (a co-evolution round's
        collection). With ``start_sampling='round_signal'`` they set each task's share of the starts drawn."""
        bad = {t: v for t, v in outcomes.items() if len(v) != 2 or not 0 <= int(v[0]) <= int(v[1])}
        if bad:
            raise ValueError(
                f"set_round_outcomes: expected (successes, episodes) with 0 ≤ successes ≤ episodes: {bad}"
            )
        self._round_outcomes = {str(t): (int(v[0]), int(v[1])) for t, v in outcomes.items()}
        self._round_draw = None

    def _round_signal_weights(self) -> torch.Tensor:
        """[S] start probabilities of start_sampling='round_signal' (uniform until a round reported outcomes)."""
        if self._round_draw is None:
            tasks = [str(row.get("task_name", "")) for row in self.train_dataset]
            self._round_draw = task_signal_weights(tasks, self._round_outcomes or {}, self.args.num_generations)
        probs, shares = self._round_draw
        for task, share in shares.items():
            self._metrics[f"starts/share/{task}"].append(share)
        return probs

    def _sample_starts(self, n: int, round_index: int = 0) -> dict[str, Any]:
        """n fresh start states for refill round `round_index` of this step (seeded by step, round and rank)."""
        # the micro-step inside the optimizer step: with gradient accumulation each one draws its own starts
        micro = self._step % self.args.gradient_accumulation_steps
        seed = self.args.seed + 7919 * (self.state.global_step + 1) + 104_729 * round_index + 1_299_709 * micro
        gen = torch.Generator().manual_seed(seed + 15_485_863 * self.args.process_index)
        if self.start_sampler is not None:
            idx = self.start_sampler.sample(n, gen)
        elif self.args.start_sampling == "round_signal":
            idx = torch.multinomial(self._round_signal_weights(), n, replacement=True, generator=gen).tolist()
        else:
            idx = torch.randint(len(self.train_dataset), (n,), generator=gen).tolist()
        batch = collate_starts([self.train_dataset[i] for i in idx])
        batch["index"] = torch.as_tensor(idx, dtype=torch.long)
        return batch

    # ------------------------------------------------------------------------------------------ rollout
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Imagine, score and compute advantages once every `num_iterations` steps; reuse the buffer between."""
        if "trajectories" in inputs:  # already prepared (transformers' training_step prepares once more)
            return inputs
        if not self.model.training:
            return self._generate_and_score(inputs)
        # One rollout per micro-step of an optimizer step (TRL's layout): micro-step k of the optimizer steps
        # s, s+1, …, s+μ-1 all train on the rollout generated at micro-step k of step s.
        accum = self.args.gradient_accumulation_steps
        slot = self._step % accum
        if (self._step // accum) % self.args.num_iterations == 0 or self._buffered_inputs[slot] is None:
            self._buffered_inputs[slot] = self._generate_and_score(inputs)
        return self._buffered_inputs[slot]

    @torch.no_grad()
    def _generate_and_score(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """One batch of B groups: rollout with dynamic sampling → advantages → old/reference log-probs → logging."""
        t0 = time.perf_counter()
        traj, rewards, counted, report, solved = self._rollout_with_dynamic_sampling(inputs)
        advantages, adv_stats = grpo.compute_advantages(
            rewards.per_function,
            rewards.weights,
            traj.group_size,
            self.args.multi_objective_aggregation,
            self.args.scale_rewards,
        )  # [N]
        if report["selected"] == 0:
            advantages = torch.zeros_like(advantages)  # no group carried signal: nothing to learn from this batch
        mask = traj.alive.clone()  # [N, T] the chunks that ran
        if self.args.mask_truncated_completions:
            mask = grpo.mask_truncated(mask, counted)
        logps = self._old_and_ref_log_probs(traj)
        # A step where no group survives on any process makes no update (see `training_step`).
        has_signal = self._global_sum(float(report["selected"] > 0)) > 0
        episodes, steps = self._round_real
        report["real_env_steps"] = steps  # this process's, dropped groups included
        if self.args.engine == "real":
            self.count_real("train", int(self._global_sum(episodes)), int(self._global_sum(steps)))
        self._round_real = [0, 0]
        self._log_rollout(traj, rewards, counted, adv_stats, report, logps, has_signal, time.perf_counter() - t0)
        anchor = self._solved_anchor_inputs(solved)
        return {
            **anchor,
            "trajectories": traj,
            "advantages": advantages,
            "mask": mask,
            "success": counted,
            "has_signal": has_signal,
            # dapo: loss tokens of the global batch per process (DDP averages gradients over processes)
            "num_items": self._global_sum(float(self._loss_mask(mask).sum())) / self.accelerator.num_processes,
            **logps,
        }

    def _rollout_round(self, batch: dict[str, Any]) -> tuple[Trajectories, RewardOutput, torch.Tensor]:
        """Imagine and score one batch of starts; returns trajectories, rewards and the successes that count [N].

        Successes that `success_filter` (verification's masking) does not trust are unscored: NaN for every reward
        function, so they get advantage 0 and stay out of their group's baseline, and they do not count as success.
        """
        ta = time.perf_counter()
        traj = self._imagine(batch["observation"], batch.get("seeds"))
        tb = time.perf_counter()
        rewards = self._score(traj)
        self._metrics["time/imagine"].append(tb - ta)
        self._metrics["time/rewards"].append(time.perf_counter() - tb)
        if traj.engine == "real":  # every row is a real episode, kept or dropped
            # what the simulator ran, re-runs after a worker failure included (the engine's count when it has one)
            cost = getattr(self.imagination, "last_cost", None) or {}
            self._round_real[0] += int(cost.get("episodes", traj.num_rows))
            self._round_real[1] += int(cost.get("env_steps", int(traj.env_steps.sum())))
            self._metrics["rollout/real_worker_failures"].append(float(cost.get("worker_failures", 0)))
            for k, v in (getattr(self.imagination, "last_timing", None) or {}).items():
                self._metrics[f"time/real_{k}"].append(float(v))
        counted = traj.success.clone()
        # success of every row this round ran, before dynamic sampling keeps some groups (the sampled policy's rate)
        self._metrics[f"rollout/{traj.engine}_success_all_rows"].append(traj.success.float().mean().item())
        if self.success_filter is not None:
            verified = self.success_filter(traj).bool()
            unverified = counted & ~verified  # [N]
            rewards.per_function[unverified] = float("nan")
            counted &= verified
            self._metrics["rollout/unverified_successes"].append(float(unverified.sum()))
        return traj, rewards, counted

    def _rollout_with_dynamic_sampling(
        self, inputs: dict[str, Any]
    ) -> tuple[Trajectories, RewardOutput, torch.Tensor, dict[str, int], Trajectories | None]:
        """Rollout rounds until B groups carry signal (DAPO dynamic sampling), each refill from new starts.

        Returns the kept groups' trajectories, rewards and counted successes, the report of `grpo.refill_groups`, and
        (when `solved_anchor_coef` > 0) one row of every group of any round whose rows all succeeded, else None.
        """
        G, B = self.args.num_generations, self.args.num_starts
        lo, hi = self.args.dynamic_sampling_range
        rounds: list[tuple[Trajectories, RewardOutput, torch.Tensor]] = []
        keep_masks: list[torch.Tensor] = []  # per round: bool [B] groups kept
        # the signal sampler draws every round itself (the dataloader's batch is uniform), and so does a trainer
        # whose starts grew (`add_starts`: the dataloader only knows the starts it began with)
        drawn_here = self.start_sampler is not None or self._draws_starts or self._round_outcomes is not None
        batch = self._sample_starts(B, round_index=0) if drawn_here else inputs
        drawn: list[tuple[torch.Tensor, torch.Tensor]] = []  # per round: start indices [B], signal [B]
        while True:
            traj, rewards, counted = self._rollout_round(batch)
            rounds.append((traj, rewards, counted))
            # Filter on the reward the advantages come from (not on a success signal they do not use).
            reward_N = grpo.aggregate_rewards(rewards.per_function, rewards.weights)  # [N], NaN = unscored
            signal = grpo.signal_groups_mask(reward_N, G, lo, hi)  # [B]
            if self.start_sampler is not None:
                drawn.append((batch["index"], signal))
            if not self.args.dynamic_sampling:
                keep_masks.append(torch.ones(B, dtype=torch.bool))
                break
            keep_masks.append(signal)
            if sum(int(k.sum()) for k in keep_masks) >= B or len(rounds) >= self.args.max_resample_rounds:
                break
            batch = self._sample_starts(B, round_index=len(rounds))
        if self.start_sampler is not None:
            self._update_start_sampler(drawn)
        round_K, group_K, report = grpo.refill_groups(keep_masks, B)
        report["seen"] = sum(k.numel() for k in keep_masks)
        if report["selected"] == 0:
            # Nothing to learn from; keep the first round for logging (its advantages are set to 0).
            round_K, group_K = torch.zeros(B, dtype=torch.long), torch.arange(B)
        parts = []
        for r, (traj_r, rewards_r, counted_r) in enumerate(rounds):
            groups = group_K[round_K == r]
            if groups.numel():
                rows = grpo.group_row_indices(groups, G)
                parts.append((traj_r.index(rows), self._index_rewards(rewards_r, rows), counted_r[rows]))
        traj = Trajectories.cat([p[0] for p in parts])
        rewards = RewardOutput(
            per_function=torch.cat([p[1].per_function for p in parts]),
            names=parts[0][1].names,
            weights=parts[0][1].weights,
        )
        solved = self._solved_rows(rounds) if self.args.solved_anchor_coef > 0 else None
        return traj, rewards, torch.cat([p[2] for p in parts]), report, solved

    def _solved_rows(self, rounds: list[tuple[Trajectories, RewardOutput, torch.Tensor]]) -> Trajectories | None:
        """The first row (its samples are i.i.d.) of every solved group of every round, kept or dropped: all its rows'
        counted successes are true, or its task is one the latest co-evolution round solved in reality."""
        G, hi = self.args.num_generations, self.args.dynamic_sampling_range[1]
        solved_tasks = {t for t, (s, n) in (self._round_outcomes or {}).items() if n > 0 and s / n >= hi}
        parts = []
        for traj, _, counted in rounds:
            solved_B = counted.view(-1, G).all(dim=1) | torch.tensor([t in solved_tasks for t in traj.task_names[::G]])
            if solved_B.any():
                parts.append(traj.index(torch.nonzero(solved_B).flatten() * G))
        return Trajectories.cat(parts) if parts else None

    def _update_start_sampler(self, drawn: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Every process's groups of this step (dropped ones too) → the start sampler's counts, on every process."""
        B, R = self.args.num_starts, self.args.max_resample_rounds
        # fixed size [R·B] so that processes that ran different numbers of rounds gather alike (-1: no group)
        index = torch.full((R * B,), -1, dtype=torch.long)
        signal = torch.zeros(R * B, dtype=torch.long)
        for r, (idx, sig) in enumerate(drawn):
            index[r * B : (r + 1) * B] = idx
            signal[r * B : (r + 1) * B] = sig.long()
        if self.accelerator.num_processes > 1:
            both = self.accelerator.gather(torch.stack([index, signal]).to(self.accelerator.device)).cpu()
            index, signal = both.view(-1, 2, R * B).transpose(0, 1).reshape(2, -1)
        valid = index >= 0
        self.start_sampler.update(index[valid], signal[valid].bool())
        for task, share in self.start_sampler.task_shares().items():
            self._metrics[f"starts/share/{task}"].append(share)

    def _imagine(self, starts: Observation, seeds: torch.Tensor | None = None) -> Trajectories:
        policy = self.accelerator.unwrap_model(self.model)
        was_training = policy.training
        policy.eval()
        try:
            traj = self.imagination.rollout(
                policy,
                starts,
                group_size=self.args.num_generations,
                temperature=self.args.temperature,
                # the real engine's episodes are as long as real_max_episode_steps allows; imagination's `horizon`
                horizon=self.args.horizon if self.args.engine == "imagined" else None,
                seeds=seeds,
            )
        finally:
            policy.train(was_training)
        return traj

    def _score(self, traj: Trajectories) -> RewardOutput:
        out = self.reward_scorer(traj, trainer_state=self.state)
        if not isinstance(out, RewardOutput):
            raise TypeError(f"reward_scorer must return a RewardOutput, got {type(out).__name__}")
        return out

    def _old_and_ref_log_probs(self, traj: Trajectories) -> dict[str, torch.Tensor | None]:
        """Per chunk [N, T]: the sampling policy's action and subtask log-probs; the reference's and its mean chunk."""
        N, T = traj.num_rows, traj.horizon
        out: dict[str, torch.Tensor | None] = {
            "old_logp": torch.stack([s.log_prob for s in traj.samples], dim=1),  # [N, T]
            "old_subtask_logp": torch.stack(
                [(s.subtask_log_probs * s.subtask_mask).sum(-1) for s in traj.samples], dim=1
            ),  # [N, T]
            "ref_logp": None,
            "ref_subtask_logp": None,
            "ref_mean": None,
        }
        ref = self._flat_log_prob(self.ref_model if self.ref_model is not None else self.imagination.world, traj)
        out["ref_logp"] = ref["action"].view(T, N).T  # [N, T]
        out["ref_subtask_logp"] = ref["subtask"].view(T, N).T  # [N, T]
        if "action_mean" in ref:
            out["ref_mean"] = ref["action_mean"].view(T, N, *ref["action_mean"].shape[1:]).transpose(0, 1)
        return out

    def _solved_anchor_inputs(self, solved: Trajectories | None) -> dict[str, Any]:
        """The solved-state anchor's rows: observations and samples of the solved rows, their chunks that ran, and
        the reference policy's mean action chunk there (`solved_anchor_coef`); empty when off or none solved."""
        if self.args.solved_anchor_coef <= 0:
            return {}
        self._metrics["rollout/solved_anchor_rows"].append(0.0 if solved is None else float(solved.num_rows))
        if solved is None:
            return {}
        ref_model = self.ref_model if self.ref_model is not None else self.imagination.world
        ref = self._flat_log_prob(ref_model, solved)
        if "action_mean" not in ref:
            raise ValueError("solved_anchor_coef > 0 needs the gaussian action head (a mean action to anchor)")
        return {"anchor_trajectories": solved, "anchor_ref_mean": ref["action_mean"].detach()}

    def _solved_anchor_loss(self, model, inputs: dict[str, Any]) -> torch.Tensor:
        """KL of the action chunk, reference → current policy, at the solved rows' states (chunks that ran).

        Both are Gaussians with the current policy's std σ (state-independent, diagonal): KL = Σ (μ_ref − μ)² / (2σ²)
        over the H·A dimensions of a chunk, averaged over the chunks that ran.
        """
        traj: Trajectories = inputs["anchor_trajectories"]
        out = self._flat_log_prob(model, traj)
        std = self.accelerator.unwrap_model(model).action_expert.std().detach()  # [H, A] env units
        kl = ((out["action_mean"] - inputs["anchor_ref_mean"]) / std).pow(2).sum(dim=(-1, -2)) / 2  # [T·N]
        alive = traj.alive.T.reshape(-1).to(kl.device, torch.float32)  # chunk-major like `_flat_log_prob`
        return (kl * alive).sum() / alive.sum().clamp(min=1)

    def count_real(self, kind: str, episodes: int, env_steps: int) -> None:
        """Add real interaction to the budget: kind "train" (rollouts the policy learns from, refresh collection) or
        "eval" (evaluation, verification). Call it with global counts, on every process alike."""
        if kind not in ("train", "eval"):
            raise ValueError(f"count_real: kind must be 'train' or 'eval', got {kind!r}")
        self.budget[f"real_{kind}_episodes"] += int(episodes)
        self.budget[f"real_{kind}_env_steps"] += int(env_steps)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            ckpt = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            if os.path.isdir(ckpt):
                _write_json_atomic(os.path.join(ckpt, BUDGET_FILE), self.budget)
                if self.start_sampler is not None:
                    _write_json_atomic(os.path.join(ckpt, START_SAMPLER_FILE), self.start_sampler.state_dict())

    def _load_start_sampler(self, checkpoint: str) -> None:
        if self.start_sampler is None:
            return
        path = os.path.join(checkpoint, START_SAMPLER_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint}: start_sampling='signal' but the checkpoint has no {START_SAMPLER_FILE} (written by a "
                "run with start_sampling='uniform'?); resume with the sampling the run was started with"
            )
        self.start_sampler.load_state_dict(_read_json(path), source=path)

    def _load_budget(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, BUDGET_FILE)
        if not os.path.isfile(path):
            return  # a checkpoint written before budgets were counted: start from zero
        saved = _read_json(path, expected=f"{{{', '.join(BUDGET_KEYS)}}}")
        if not isinstance(saved, dict):
            raise ValueError(
                f"{path}: expected a JSON object of counts {list(BUDGET_KEYS)}, got {type(saved).__name__}"
            )
        missing = [k for k in BUDGET_KEYS if not isinstance(saved.get(k), int) or isinstance(saved.get(k), bool)]
        if missing:
            raise ValueError(
                f"{path}: expected integer counts {list(BUDGET_KEYS)}, missing or not integers: {missing}"
            )
        self.budget = {k: int(saved[k]) for k in BUDGET_KEYS}

    def _global_sum(self, value: float) -> float:
        """`value` summed over processes (every process calls this at the same point of the step)."""
        if self.accelerator.num_processes == 1:
            return float(value)
        t = torch.tensor([float(value)], device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def _log_rollout(
        self,
        traj: Trajectories,
        rewards: RewardOutput,
        counted: torch.Tensor,
        adv_stats: dict[str, torch.Tensor],
        report: dict[str, int],
        logps: dict[str, torch.Tensor | None],
        has_signal: bool,
        seconds: float,
    ) -> None:
        m = self._metrics
        N, T = traj.num_rows, traj.horizon
        alive = traj.alive.bool()
        # success of the kept groups (biased by dynamic sampling; `_success_all_rows` is over every row): real
        # success in the real simulator, else imagined success
        success_key = "rollout/real_success" if traj.engine == "real" else "rollout/imagined_success"
        m[success_key].append(traj.success.float().mean().item())
        m["rollout/counted_success"].append(counted.float().mean().item())
        m["rollout/episode_length"].append(traj.lengths.float().mean().item())
        m["rollout/action_abs_mean"].append(traj.actions.abs().mean().item())
        # share of sampled action elements outside the bounds (executed clipped, as in reality)
        m["rollout/action_clip_frac"].append((traj.sampled_actions.abs() > 1.0).float().mean().item())
        m["reward/total"].append(adv_stats["reward_mean"].item())
        m["reward/total_std"].append(adv_stats["reward_std"].item())
        m["reward/frac_zero_std_groups"].append(adv_stats["frac_reward_zero_std"].item())
        for f, name in enumerate(rewards.names):
            col = rewards.per_function[:, f]
            valid = col[~torch.isnan(col)]
            m[f"reward/{name}"].append(valid.mean().item() if valid.numel() else float("nan"))
        m["rollout/kept_groups"].append(float(report["selected"]))
        m["rollout/no_signal_step"].append(0.0 if has_signal else 1.0)
        if self.args.dynamic_sampling:
            m["rollout/groups_seen"].append(float(report["seen"]))
            m["rollout/resample_rounds"].append(float(report["rounds"]))
        means = traj.action_means  # [N, T, H, A] or None
        if means is not None and logps["ref_mean"] is not None:
            shift = (torch.stack([s.extras["mean"] for s in traj.samples], 1) - logps["ref_mean"].cpu()).abs()
            m["policy/mean_shift"].append(shift.mean(dim=(-1, -2))[alive].mean().item())  # env units, vs reference
        std = getattr(getattr(self.accelerator.unwrap_model(self.model), "action_expert", None), "std", None)
        if callable(std):
            m["policy/action_std"].append(float(std().mean()))
        m["time/rollout_total"].append(seconds)
        t_imagine = sum(m["time/imagine"][-report["rounds"] :]) if m["time/imagine"] else 0.0
        if traj.engine == "imagined":
            m["time/imagined_env_steps_per_s"].append(
                float(N * T * traj.samples[0].actions.shape[1]) / max(t_imagine, 1e-9)
            )
        else:
            m["time/real_env_steps_per_s"].append(float(report["real_env_steps"]) / max(t_imagine, 1e-9))
        self._maybe_log_images(traj, rewards)

    # ------------------------------------------------------------------------------------------ loss
    def _flat_log_prob(self, model: torch.nn.Module, traj: Trajectories) -> dict[str, torch.Tensor]:
        """Log-probs of every (observation, sample) pair of `traj`, flattened chunk-major to [T·N]."""
        obs = Observation.cat(traj.observations)  # [T·N]
        sample = ActionSample.cat(traj.samples)  # [T·N]
        return model(obs=obs, sample=sample, temperature=self.args.temperature)

    def _loss_mask(self, mask_NT: torch.Tensor) -> torch.Tensor:
        """The loss tokens of a row: its action chunks [N, T], followed by their subtasks when subtask_coef > 0."""
        return torch.cat([mask_NT, mask_NT], dim=1) if self.args.subtask_coef > 0 else mask_NT

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Clipped policy loss on action (and subtask) tokens + subtask KL anchor + NLL + world auxiliary loss.

        `num_items_in_batch` of transformers counts label tokens, which this model has none of; dapo's normaliser is
        the loss-token count of the rollout (`inputs["num_items"]`).
        """
        traj: Trajectories = inputs["trajectories"]
        N, T = traj.num_rows, traj.horizon
        t0 = time.perf_counter()
        out = self._flat_log_prob(model, traj)
        logp = out["action"].view(T, N).T  # [N, T]
        sub = out["subtask"].view(T, N).T  # [N, T]
        mask = inputs["mask"]  # [N, T]
        adv_NT = grpo.broadcast_advantages(inputs["advantages"], mask)  # [N, T]
        new_lp, old_lp, tok_adv, ref_lp, weights = logp, inputs["old_logp"], adv_NT, inputs["ref_logp"], None
        if self.args.subtask_coef > 0:
            # A chunk's subtask is one more token of the same trajectory with the same advantage (subtask_coef).
            new_lp = torch.cat([logp, sub], dim=1)  # [N, 2T]
            old_lp = torch.cat([inputs["old_logp"], inputs["old_subtask_logp"]], dim=1)
            tok_adv = torch.cat([adv_NT, adv_NT], dim=1)
            weights = torch.cat([torch.ones_like(logp), torch.full_like(sub, self.args.subtask_coef)], dim=1).detach()
            ref_lp = torch.cat([ref_lp, inputs["ref_subtask_logp"]], dim=1)
        loss, stats = grpo.policy_loss(
            new_lp, old_lp.detach(), tok_adv, self._loss_mask(mask), logp_ref=ref_lp, token_weights=weights,
            num_items=inputs["num_items"], **self._loss_kwargs,
        )  # fmt: skip
        m = self._metrics
        m["loss/policy"].append(stats.get("policy_loss", loss).item())
        for k, v in stats.items():
            if k != "policy_loss":
                m[f"policy/{k}"].append(float(v))
        if self.args.subtask_beta > 0:
            kl = grpo.kl_k3(sub, inputs["ref_subtask_logp"])  # [N, T] per chunk's subtask
            kl = torch.where(mask.bool(), kl, torch.zeros_like(kl)).sum() / mask.sum().clamp(min=1)
            loss = loss + self.args.subtask_beta * kl
            m["loss/subtask_kl"].append(kl.item())
        if self.args.nll_coef > 0:
            nll = grpo.nll_anchor_loss(logp, mask, inputs["success"])
            loss = loss + self.args.nll_coef * nll
            m["loss/nll"].append(nll.item())
        if "anchor_trajectories" in inputs:
            anchor = self._solved_anchor_loss(model, inputs)
            loss = loss + self.args.solved_anchor_coef * anchor
            m["loss/solved_anchor"].append(anchor.item())
        if self.args.world_aux_coef > 0 or self.args.bc_coef > 0:
            world, bc = self._real_window_losses(model)
            if self.args.world_aux_coef > 0:
                loss = loss + self.args.world_aux_coef * world
                m["loss/world_aux"].append(world.item())
            if self.args.bc_coef > 0:
                loss = loss + self.args.bc_coef * bc
                m["loss/bc"].append(bc.item())
        m["time/update_forward"].append(time.perf_counter() - t0)
        return loss

    def _real_window_losses(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """SFT losses on a batch of real windows: the World Expert's, weighted as in SFT (it keeps modelling reality
        while the backbone it reads moves), and the Action Expert's behaviour-cloning loss (`bc_coef`)."""
        losses = model(sft_batch=self._world_aux_batch())
        return self.accelerator.unwrap_model(model).world_loss(losses), losses["loss/action"]

    def _world_aux_batch(self) -> dict[str, Any]:
        """A batch of real windows drawn with replacement, seeded by (rank, optimizer step, draw within the step): a
        run resumed from a checkpoint draws the windows the uninterrupted run drew."""
        step = int(self.state.global_step)
        if self._world_aux_step != step:
            self._world_aux_step, self._world_aux_draws = step, 0
        seed = self.args.seed + 31 * self.args.process_index + 1_000_003 * (step + 1) + 7919 * self._world_aux_draws
        self._world_aux_draws += 1
        gen = torch.Generator().manual_seed(seed)
        n = len(self.world_aux_dataset)
        idx = torch.randint(n, (min(self.args.world_aux_batch_size, n),), generator=gen).tolist()
        return self.world_aux_collate([self.world_aux_dataset[i] for i in idx])

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`transformers.Trainer.train`; remembers the checkpoint it resumes from (callbacks restore their state)."""
        resumed = resume_from_checkpoint
        if resumed is True:
            from transformers.trainer_utils import get_last_checkpoint  # noqa: PLC0415

            resumed = get_last_checkpoint(self.args.output_dir)
        self.resumed_from = resumed if isinstance(resumed, str) else None
        if self.resumed_from is not None:
            self._load_budget(self.resumed_from)
            self._load_start_sampler(self.resumed_from)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        t0 = time.perf_counter()
        # Train mode before preparing: a policy loaded in eval mode (from_pretrained) would otherwise make the first
        # step's rollout look like an evaluation call, unbuffered, and the second step would roll out again.
        model.train()
        inputs = self._prepare_inputs(inputs)
        if not inputs["has_signal"]:
            # No group on any process carried signal: no backward, so every gradient stays None and the optimizer
            # leaves the weights alone (AdamW skips parameters without a gradient; no momentum, no weight decay).
            out = torch.zeros((), device=self.args.device)
        else:
            out = super().training_step(model, inputs, num_items_in_batch)
        self._step += 1
        self._metrics["time/step"].append(time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, vals in self._metrics.items():
            valid = [v for v in vals if not math.isnan(v)]
            logs[key] = sum(valid) / len(valid) if valid else None
        self._metrics.clear()
        for key, value in self.budget.items():
            logs[f"budget/{key}"] = float(value)
        super().log(logs, start_time)

    def _maybe_log_images(self, traj: Trajectories, rewards: RewardOutput) -> None:
        every = self.args.log_image_steps
        if not every or self.state.global_step % every != 0 or not self.accelerator.is_main_process:
            return
        rows = list(range(0, traj.num_rows, traj.group_size))[:4]  # the first sample of up to 4 groups
        first = traj.observations[0].images[rows]  # [R, H, W, 3]
        strip = torch.cat([first[:, None], traj.subgoal_images[rows]], dim=1)  # [R, 1+T, H, W, 3]
        R, T1, Hp, Wp, _ = strip.shape
        grid = strip.permute(0, 2, 1, 3, 4).reshape(R * Hp, T1 * Wp, 3).numpy()  # rows: starts; columns: chunks
        path = os.path.join(self.args.output_dir, "imagined", f"step_{self.state.global_step:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        import imageio.v3 as iio

        iio.imwrite(path, grid)
        report_to = self.args.report_to or []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                caption = " | ".join(f"{traj.task_names[r]}: {'✓' if traj.success[r] else '✗'}" for r in rows)
                wandb.log({"rollout/imagined_strip": wandb.Image(grid, caption=caption)}, commit=False)
        if "tensorboard" in report_to:
            for cb in self.callback_handler.callbacks:
                tb = getattr(cb, "tb_writer", None)
                if tb is not None:
                    tb.add_image("rollout/imagined_strip", grid, self.state.global_step, dataformats="HWC")

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _index_rewards(rewards: RewardOutput, rows: torch.Tensor) -> RewardOutput:
        return RewardOutput(per_function=rewards.per_function[rows], names=rewards.names, weights=rewards.weights)
