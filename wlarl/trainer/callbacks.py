"""Trainer callbacks for real-simulator evaluation, paired verification and keeping the best real checkpoint.

`wlarl/` never imports `rollout/`, so the callbacks receive what they run by injection; the `grpo_world` recipe
builds those callables and the callbacks (`rollout.real.make_real_evaluator`, `rollout.verify.Verifier`,
`rollout.refresh.WorldRefresh`):

- ``evaluator(policy, step) -> dict``: float metrics (``eval/real_success``, …) and optionally ``"videos"``:
  name → uint8 [T, H, W, 3].
- ``verifier(policy, step) -> dict``: the same for ``verify/…`` metrics.
- ``refresh(policy, step) -> dict``: ``verify/refresh_*`` metrics of a simulator refresh.

How metrics reach ``metrics.jsonl``: `GRPOWorldTrainer` calls ``callback.bind(trainer)`` on every callback
that has `bind`; the callbacks then log with ``trainer.log(metrics)``, which appends to
``state.log_history`` and fires ``on_log`` of every callback (the trainer's metrics.jsonl writer, wandb,
tensorboard, and `KeepBestRealCallback`). Without a bound trainer, a ``log_fn(metrics)`` given at
construction is used, else the metrics are appended to ``state.log_history`` directly.

Schedule (`fires_at`): at train begin (the current global step, 0 or the resumed step), after every
optimizer step whose global step is a multiple of `every_steps`, and at train end unless that step was just
evaluated. With several processes only the main process evaluates; the metrics are broadcast so that every
process logs and decides (e.g. restores) the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from wlarl.types import last_alive_index

logger = logging.getLogger(__name__)

Evaluator = Callable[[torch.nn.Module, int], dict[str, Any]]
SuccessClassifier = Callable[[torch.Tensor, list[str]], torch.Tensor]


def fires_at(step: int, every_steps: int) -> bool:
    """Whether a periodic callback fires after optimizer step `step` (1-based global step): every `every_steps`."""
    return every_steps > 0 and step > 0 and step % every_steps == 0


def period_steps(value: float | int | None, max_steps: int) -> int:
    """Steps between runs: an int, or a float in (0, 1) read as a ratio of `max_steps` (TrainingArguments style);
    0 or None: never."""
    if not value:
        return 0
    if 0 < value < 1:
        return max(1, math.ceil(value * max_steps))
    return int(value)


def mask_unverified(
    success: torch.Tensor,
    success_probs: torch.Tensor,
    imagination_gap: float | None,
    gap_threshold: float,
    confidence: float = 0.9,
) -> torch.Tensor:
    """Imagined successes that count, given the last measured imagination gap (WoVR-style masking).

    When verification measured imagined success exceeding real success by more than `gap_threshold`, the
    simulator is hallucinating successes: an imagined success then only counts if a second, independent signal is
    confident about it (probability >= `confidence`). Otherwise (gap unknown, NaN or small) nothing changes.

    Args:
        success: bool [N] imagined success per trajectory.
        success_probs: float [N] success probability of each trajectory by a signal that did not decide `success`
            (see `success_confidence`).
        imagination_gap: last measured imagined − real success rate (None before the first verification).
        gap_threshold: gap above which unconfident successes are masked.
        confidence: probability an imagined success needs while masking is active.

    Returns:
        bool [N] success mask to use for rewards/advantages.
    """
    success = torch.as_tensor(success).bool()
    probs = torch.as_tensor(success_probs, dtype=torch.float32, device=success.device)
    if probs.shape != success.shape:
        raise ValueError(
            f"mask_unverified: success_probs must have the shape of success {tuple(success.shape)}, got {tuple(probs.shape)}"
        )
    if not masking_active(imagination_gap, gap_threshold):
        return success.clone()
    return success & (probs >= confidence)


def masking_active(imagination_gap: float | None, gap_threshold: float) -> bool:
    """Whether the last measured imagination gap is known and above `gap_threshold`."""
    return imagination_gap is not None and math.isfinite(imagination_gap) and imagination_gap > gap_threshold


def trajectory_success_probs(traj: Any) -> torch.Tensor:
    """float [N]: the World Expert's success head, sigmoid of its logit at each trajectory's last counted chunk.

    Args:
        traj: `Trajectories` with success_logits [N, T] and alive [N, T].
    """
    last = last_alive_index(traj.alive)  # [N]
    logits = traj.success_logits.gather(1, last[:, None].to(traj.success_logits.device))[:, 0]  # [N]
    return torch.sigmoid(logits.float()).cpu()


def classifier_success_probs(traj: Any, success_classifier: SuccessClassifier | None = None) -> torch.Tensor:
    """float [N]: the success classifier's probability of each trajectory's last counted predicted frame.

    Reads `traj.classifier_probs` [N, T] when the imagination engine filled it (it ran the classifier), else runs
    `success_classifier` on ``traj.subgoal_images[n, last alive chunk]``.
    """
    last = last_alive_index(traj.alive)  # [N]
    probs = getattr(traj, "classifier_probs", None)  # a newer Trajectories field; hand-built ones may lack it
    if probs is not None:
        return probs.float().cpu().gather(1, last.cpu()[:, None])[:, 0]
    if success_classifier is None:
        raise ValueError(
            "classifier_success_probs: the trajectories carry no classifier_probs and no success_classifier was given "
            "(the success reward model's predict_proba)"
        )
    rows = torch.arange(len(last))
    images = traj.subgoal_images[rows, last.cpu()]  # uint8 [N, H, W, 3] (lazy images decode just these frames)
    out = torch.as_tensor(success_classifier(images, list(traj.task_names)), dtype=torch.float32).cpu().reshape(-1)
    if out.shape != (len(last),):
        raise ValueError(f"success_classifier: expected {len(last)} probabilities, got shape {tuple(out.shape)}")
    return out


def success_confidence(
    traj: Any, success_signal: str, success_classifier: SuccessClassifier | None = None
) -> torch.Tensor:
    """float [N]: how sure a signal that did NOT decide imagined success is that each trajectory succeeded.

    A success the World Expert's head hallucinated must not be confirmed by that head: with ``success_signal``
    "head" the check is the success classifier on the last counted predicted frame; with "classifier" it is the
    head; with "both" (both had to agree) it is the smaller of the two; with "state" (the state reward model on the
    predicted full state decided) it is the head.

    Args:
        traj: `Trajectories` (alive [N, T], success_logits [N, T], classifier_probs [N, T] or None, subgoal_images).
        success_signal: what decided success in imagination: "classifier", "head" or "both".
        success_classifier: ``fn(images uint8 [n, H, W, 3], task_names) -> probs [n]``, used when
            `traj.classifier_probs` is missing.
    """
    if success_signal in ("classifier", "state"):
        return trajectory_success_probs(traj)
    if success_signal == "head":
        return classifier_success_probs(traj, success_classifier)
    if success_signal == "both":
        return torch.minimum(trajectory_success_probs(traj), classifier_success_probs(traj, success_classifier))
    raise ValueError(
        f"success_confidence: success_signal must be 'classifier', 'head', 'both' or 'state', got {success_signal!r}"
    )


# --------------------------------------------------------------------------------------------------- base
class _PeriodicCallback(TrainerCallback):
    """Runs `fn(model, step)` on a schedule, writes its videos and logs its metrics through the trainer."""

    prefix = "eval"
    needs_grad = False  # evaluations run under no_grad; a refresh trains
    budget_kind = "eval"  # the real episodes this callback runs count as evaluation ("train": training data)

    def __init__(
        self,
        fn: Evaluator,
        every_steps: int,
        output_dir: str | None = None,
        at_start: bool = True,
        at_end: bool = True,
        log_fn: Callable[[dict[str, float]], None] | None = None,
        max_videos: int = 4,
        fps: int = 10,
    ):
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}: expected a callable (policy, step) -> dict, got {fn!r}")
        if every_steps < 0:
            raise ValueError(
                f"{type(self).__name__}: every_steps must be >= 0 (0 = only start/end), got {every_steps}"
            )
        self.fn = fn
        self.every_steps = int(every_steps)
        self.output_dir = output_dir
        self.at_start = at_start
        self.at_end = at_end
        self.log_fn = log_fn
        self.max_videos = max_videos
        self.fps = fps
        self.trainer: Any = None
        self.last_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []

    def bind(self, trainer: Any) -> None:
        """Called by `GRPOWorldTrainer` at construction: metrics are then logged with ``trainer.log``."""
        self.trainer = trainer
        if self.output_dir is None:
            self.output_dir = trainer.args.output_dir

    # -- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start:
            self.run(args, state, model, "start")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if fires_at(state.global_step, self.every_steps) and self.last_step != state.global_step:
            self.run(args, state, model, "step")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.at_end and self.last_step != state.global_step:
            self.run(args, state, model, "end")

    # -- the work
    def _call(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        try:
            with torch.set_grad_enabled(self.needs_grad):
                out = self.fn(model, step)
        finally:
            model.train(was_training)
        if not isinstance(out, dict):
            raise TypeError(
                f"{type(self).__name__}: the evaluator must return a dict of metrics, got {type(out).__name__}"
            )
        return out

    def run(self, args: Any, state: Any, model: torch.nn.Module | None, when: str) -> dict[str, float]:
        """Evaluate now (on the main process), write videos, log and return the float metrics."""
        if model is None:
            model = getattr(self.trainer, "model", None)
        if model is None:
            raise ValueError(f"{type(self).__name__}: no model given to the callback and no trainer bound")
        step = int(state.global_step)
        metrics: dict[str, float] | None = None
        if state.is_world_process_zero:
            try:
                out = self._call(model, step)
            except Exception as err:
                if when == "start":  # a misconfiguration: fail before hours of training
                    raise
                # A failed periodic evaluation must not end training: report it and go on.
                logger.warning("%s at step %d failed:\n%s", type(self).__name__, step, traceback.format_exc())
                out = {f"{self.prefix}/error": 1.0, "error_message": str(err)}
            videos = out.pop("videos", None) or {}
            # the real interaction of this call: logged, and added to the trainer's budget on every process
            used = {k: out.pop(k) for k in ("real_episodes", "real_env_steps") if k in out}
            metrics = {k: float(v) for k, v in out.items() if isinstance(v, (int, float, np.number, bool))}
            metrics.update({f"{self.prefix}/{k}_used": float(v) for k, v in used.items()})
            metrics.update(self._extra_metrics(model, step, out))
            if videos:
                self._write_videos(videos, step, args)
        metrics = _broadcast(metrics)
        count = getattr(self.trainer, "count_real", None)
        if callable(count):
            count(
                self.budget_kind,
                int(metrics.get(f"{self.prefix}/real_episodes_used", 0)),
                int(metrics.get(f"{self.prefix}/real_env_steps_used", 0)),
            )
        self.last_step = step
        self.last_metrics = metrics
        self.history.append((step, metrics))
        self._log(metrics, state)
        return metrics

    def _extra_metrics(self, model: torch.nn.Module, step: int, out: dict[str, Any]) -> dict[str, float]:
        return {}

    def _log(self, metrics: dict[str, float], state: Any) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        elif self.log_fn is not None:
            self.log_fn(dict(metrics))
        else:
            state.log_history.append({**metrics, "step": state.global_step})

    def _write_videos(self, videos: dict[str, Any], step: int, args: Any) -> None:
        from wlarl.utils.video import frame_strip, write_video

        if self.output_dir is None:
            return
        report_to = list(getattr(args, "report_to", None) or [])
        for name, frames in list(videos.items())[: self.max_videos]:
            frames = np.asarray(frames)
            path = write_video(
                frames, os.path.join(self.output_dir, "videos", f"{self.prefix}_step{step:06d}_{name}"), self.fps
            )
            tag = f"{self.prefix}/video/{name}"
            if "wandb" in report_to:
                try:
                    import wandb

                    if wandb.run is not None:
                        wandb.log({tag: wandb.Video(str(path), fps=self.fps)}, commit=False)
                except (ImportError, ValueError, RuntimeError) as err:
                    logger.warning("could not log video %s to wandb: %s", path, err)
            if "tensorboard" in report_to and self.trainer is not None:
                # tensorboard's add_video needs moviepy: log a strip of frames as one image instead.
                for cb in self.trainer.callback_handler.callbacks:
                    tb = getattr(cb, "tb_writer", None)
                    if tb is not None:
                        tb.add_image(tag, frame_strip(frames), step, dataformats="HWC")


def _broadcast(metrics: dict[str, float] | None) -> dict[str, float]:
    """Send the main process's metrics to every process (identity when not distributed)."""
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        box = [metrics]
        torch.distributed.broadcast_object_list(box, src=0)
        metrics = box[0]
    return dict(metrics or {})


# --------------------------------------------------------------------------------------------------- callbacks
class RealEvalCallback(_PeriodicCallback):
    """Real-simulator evaluation at train begin, every `eval_steps` optimizer steps and at train end.

    Args:
        evaluator: ``evaluator(policy, step) -> dict`` (e.g. `rollout.real.make_real_evaluator`) returning
            ``eval/real_success``, ``eval/real_success_ci_low``/``_ci_high``, ``eval/<task>/success``,
            ``eval/episode_length``, ``eval/timed_out`` … and optionally ``"videos"``.
        eval_steps: period in optimizer steps (0: only at start and end).
        output_dir: videos go to ``output_dir/videos/eval_step<step>_<name>.mp4`` (.gif without ffmpeg);
            defaults to the bound trainer's output_dir.
        at_start, at_end: also evaluate at train begin / end.
        log_fn: fallback logger when no trainer is bound.
        max_videos: videos written per evaluation.
        fps: video frame rate.
    """

    prefix = "eval"

    def __init__(self, evaluator: Evaluator, eval_steps: int, output_dir: str | None = None, **kwargs: Any):
        super().__init__(evaluator, eval_steps, output_dir, **kwargs)


class VerifyCallback(_PeriodicCallback):
    """Paired verification every `verify_steps`; optionally masks imagined successes it cannot confirm.

    Args:
        verifier: ``verifier(policy, step) -> dict`` with ``verify/imagination_gap`` among its metrics
            (e.g. `rollout.verify.Verifier`).
        verify_steps: period in optimizer steps (0: only at start/end as configured).
        output_dir: side-by-side videos go to ``output_dir/videos/verify_step<step>_<name>``.
        refresh_fn: optional ``refresh_fn(policy, step) -> dict`` run after each verification (e.g. fine-tune the
            simulator snapshot on the real episodes gathered so far); its metrics are logged with the rest.
        mask_unverified: when bound, install ``trainer.success_filter(traj) -> bool [N]``: while the measured gap
            exceeds `mask_gap_threshold`, an imagined success counts only if a signal independent of the one that
            decided it (`success_confidence`) gives it at least `mask_confidence`. The trainer leaves the rows it
            rejects unscored and counts them as failures.
        mask_gap_threshold: imagination gap above which masking acts.
        mask_confidence: probability an imagined success needs while masking is active.
        success_signal: what decided success in imagination ("classifier", "head", "both" or "state"; the engine's).
        success_classifier: ``fn(images uint8 [n, H, W, 3], task_names) -> probs [n]`` (the success reward model);
            needed by masking with ``success_signal="head"``, and with "both" when trajectories lack
            `classifier_probs`.
        at_start: verify at train begin too (default False: the first verification comes after `verify_steps`).
        episodes_train: the verification episodes are training data too (a refresh fine-tunes on them): the budget
            counts them as `budget/real_train_episodes` instead of `budget/real_eval_episodes`.
    """

    prefix = "verify"

    def __init__(
        self,
        verifier: Evaluator,
        verify_steps: int,
        output_dir: str | None = None,
        refresh_fn: Evaluator | None = None,
        mask_unverified: bool = False,
        mask_gap_threshold: float = 0.2,
        mask_confidence: float = 0.9,
        success_signal: str = "classifier",
        success_classifier: SuccessClassifier | None = None,
        at_start: bool = False,
        at_end: bool = True,
        episodes_train: bool = False,
        **kwargs: Any,
    ):
        super().__init__(verifier, verify_steps, output_dir, at_start=at_start, at_end=at_end, **kwargs)
        # With a World-Expert refresh the verification episodes are also its training data: count them as such.
        self.budget_kind = "train" if episodes_train else "eval"
        if success_signal not in ("classifier", "head", "both", "state"):
            raise ValueError(
                f"VerifyCallback: success_signal must be 'classifier', 'head', 'both' or 'state', got {success_signal!r}"
            )
        if mask_unverified and success_signal == "head" and success_classifier is None:
            raise ValueError(
                "VerifyCallback: mask_unverified with success_signal='head' checks the head's successes with the "
                "success classifier, but none was given: add a success reward model (reward_funcs subgoal_success) "
                "or set mask_unverified False"
            )
        self.refresh_fn = refresh_fn
        self.mask_unverified = mask_unverified
        self.mask_gap_threshold = mask_gap_threshold
        self.mask_confidence = mask_confidence
        self.success_signal = success_signal
        self.success_classifier = success_classifier
        self.imagination_gap: float | None = None

    def bind(self, trainer: Any) -> None:
        super().bind(trainer)
        if self.mask_unverified:
            trainer.success_filter = self.success_filter

    def success_filter(self, traj: Any) -> torch.Tensor:
        """bool [N]: which imagined successes count (the trainer leaves ``traj.success & ~filter`` rows unscored)."""
        success = torch.as_tensor(traj.success).bool().cpu()
        if not masking_active(self.imagination_gap, self.mask_gap_threshold):
            return success.clone()  # no second opinion is computed while the gap is small
        confidence = success_confidence(traj, self.success_signal, self.success_classifier)
        return mask_unverified(
            success, confidence, self.imagination_gap, self.mask_gap_threshold, self.mask_confidence
        )

    def _extra_metrics(self, model: torch.nn.Module, step: int, out: dict[str, Any]) -> dict[str, float]:
        gap = out.get("verify/imagination_gap")
        if gap is not None and math.isfinite(float(gap)):
            self.imagination_gap = float(gap)
        extra: dict[str, float] = {}
        if self.mask_unverified:
            extra["verify/masking_active"] = float(masking_active(self.imagination_gap, self.mask_gap_threshold))
        if self.refresh_fn is not None and "verify/error" not in out:
            refreshed = self.refresh_fn(model, step)
            extra.update({k: float(v) for k, v in refreshed.items() if isinstance(v, (int, float, np.number, bool))})
        return extra

    def run(self, args: Any, state: Any, model: torch.nn.Module | None, when: str) -> dict[str, float]:
        metrics = super().run(args, state, model, when)
        # Non-main processes learn the gap from the broadcast metrics, so that masking agrees across ranks.
        gap = metrics.get("verify/imagination_gap")
        if gap is not None and math.isfinite(gap):
            self.imagination_gap = float(gap)
        return metrics


class AgreementCallback(_PeriodicCallback):
    """Advantage agreement at train begin, every `agreement_steps` optimizer steps and at train end.

    Args:
        agreement: ``agreement(policy, step) -> dict`` (e.g. `rollout.agreement.AdvantageAgreement`) returning
            ``verify/advantage_agreement`` and related metrics, ``real_episodes`` and ``real_env_steps``.
        agreement_steps: period in optimizer steps (0: only at start and end).
        **kwargs: as `_PeriodicCallback` (at_start, at_end, log_fn, …).

    Its real replays count as evaluation episodes in the run's budget (logged as
    ``verify/agreement/real_episodes_used``); a failed call logs ``verify/agreement/error``.
    """

    prefix = "verify/agreement"

    def __init__(self, agreement: Evaluator, agreement_steps: int, **kwargs: Any):
        super().__init__(agreement, agreement_steps, **kwargs)


class CoevolutionCallback(_PeriodicCallback):
    """Co-evolution rounds: at train begin and every `steps_per_round` optimizer steps, `rounds` times in all.

    Args:
        round_fn: ``round_fn(policy, round_index) -> dict`` (e.g. `rollout.coevolution.CoevolutionRound`): collects
            real episodes with the current policy, refreshes the simulator and the reward models, and returns
            ``round/*`` metrics, ``real_episodes`` / ``real_env_steps`` (counted as training episodes) and
            ``starts``: the new start states, added to the trainer's (`GRPOWorldTrainer.add_starts`), and optionally
            ``task_outcomes``: ``{task: (successes, episodes)}`` of the collected episodes
            (`GRPOWorldTrainer.set_round_outcomes`).
        steps_per_round: K optimizer steps between rounds.
        rounds: R.
        restore_fn: ``restore_fn(rounds_done) -> {"starts", "task_outcomes"}``: a resumed run rebuilds the rounds it
            had done instead of running a new one at train begin (e.g. `CoevolutionRound.restore`).

    One process only for now: the refreshed simulator lives on the main process.
    """

    prefix = "round"
    needs_grad = True  # a round refreshes the World Expert
    budget_kind = "train"  # the collected episodes are training data

    def __init__(
        self,
        round_fn: Callable[[torch.nn.Module, int], dict[str, Any]],
        steps_per_round: int,
        rounds: int,
        restore_fn: Callable[[int], list[dict[str, Any]]] | None = None,
        **kwargs: Any,
    ):
        if steps_per_round < 1 or rounds < 1:
            raise ValueError(
                f"CoevolutionCallback: steps_per_round ({steps_per_round}) and rounds ({rounds}) must be ≥ 1"
            )
        self.steps_per_round, self.rounds = int(steps_per_round), int(rounds)
        self.restore_fn = restore_fn
        kwargs.update(at_start=True, at_end=False)
        super().__init__(lambda model, step: round_fn(model, step // self.steps_per_round), steps_per_round, **kwargs)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if getattr(args, "world_size", 1) > 1:
            raise ValueError(
                "co-evolution rounds run on one process for now (the refreshed simulator lives on the main process); "
                "launch with one process or set rounds 1"
            )
        if state.global_step > 0:  # resumed: the rounds up to this step ran before the checkpoint was written
            done = min(self.rounds, state.global_step // self.steps_per_round + 1)
            if self.restore_fn is None:
                raise ValueError("CoevolutionCallback: resuming needs restore_fn to rebuild the rounds already done")
            self._apply(self.restore_fn(done))
            self.last_step = state.global_step
            return
        super().on_train_begin(args, state, control, model=model, **kwargs)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step < self.rounds * self.steps_per_round:
            super().on_step_end(args, state, control, model=model, **kwargs)

    def _apply(self, out: dict[str, Any]) -> None:
        """A round's (or a restore's) new starts and task outcomes → the trainer."""
        if not isinstance(out, dict):
            raise TypeError(f"CoevolutionCallback: a round must return a dict, got {type(out).__name__}")
        if out.get("starts"):
            self._trainer_method("add_starts")(list(out["starts"]))
        if out.get("task_outcomes"):
            self._trainer_method("set_round_outcomes")(dict(out["task_outcomes"]))

    def _trainer_method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.trainer, name, None)
        if not callable(method):
            raise TypeError(f"CoevolutionCallback: the bound trainer has no {name} (use GRPOWorldTrainer)")
        return method

    def _extra_metrics(self, model: torch.nn.Module, step: int, out: dict[str, Any]) -> dict[str, float]:
        self._apply(out)
        return {"round/start_states": float(len(self.trainer.train_dataset))} if self.trainer is not None else {}


class RefreshWorldCallback(_PeriodicCallback):
    """Every `refresh_steps`, runs ``refresh_fn(policy, step) -> dict`` (e.g. fine-tune the simulator snapshot's
    World Expert on the real episodes gathered so far, `rollout.refresh.WorldRefresh`) and logs its metrics
    (``verify/refresh_*``). Never at train begin or end."""

    prefix = "verify"
    needs_grad = True

    def __init__(self, refresh_fn: Evaluator, refresh_steps: int, **kwargs: Any):
        kwargs.setdefault("at_start", False)
        kwargs.setdefault("at_end", False)
        super().__init__(refresh_fn, refresh_steps, **kwargs)


class KeepBestRealCallback(TrainerCallback):
    """Keeps the best policy by real success; restores it when real success falls more than `margin` below it.

    Reads every log that contains `metric_key` (logged by `RealEvalCallback` through ``trainer.log``) and acts on
    it at the end of that event (train begin, step end or train end), so that callbacks placed before it, such as
    verification, measure the policy that was trained rather than a restored one. It logs
    ``eval/best_real_success``, ``eval/best_step`` and ``eval/restored`` (1.0 when the weights were just
    restored). The best weights are a CPU copy of the state dict (and, with `save_best`, a ``save_pretrained``
    copy in ``output_dir/best``). Restoring copies the weights in place, so the optimizer keeps its parameter
    references (its moment estimates are kept too).

    Args:
        margin: restore when ``best − current > margin`` (success-rate units).
        metric_key: the metric to maximise.
        output_dir: where `save_best` writes (default: the bound trainer's output_dir).
        save_best: also `save_pretrained` the best policy to ``output_dir/best``.
    """

    def __init__(
        self,
        margin: float = 0.1,
        metric_key: str = "eval/real_success",
        output_dir: str | None = None,
        save_best: bool = False,
        log_fn: Callable[[dict[str, float]], None] | None = None,
    ):
        if margin < 0:
            raise ValueError(f"KeepBestRealCallback: margin must be >= 0, got {margin}")
        self.margin = margin
        self.metric_key = metric_key
        self.output_dir = output_dir
        self.save_best = save_best
        self.log_fn = log_fn
        self.trainer: Any = None
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.restores = 0
        self._pending: tuple[float, int] | None = None  # (value, step) read from a log, not acted on yet

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer
        if self.output_dir is None:
            self.output_dir = trainer.args.output_dir

    def update(self, model: torch.nn.Module, value: float, step: int, save: bool = True) -> dict[str, float]:
        """Record `value` (real success at `step`): keep the weights when best, restore when it fell too far.

        `save` (False on non-main processes) gates the `save_best` copy on disk.

        Returns:
            {"eval/best_real_success", "eval/best_step", "eval/restored"}; empty when `value` is NaN.
        """
        if value is None or not math.isfinite(value):
            return {}
        restored = 0.0
        if self.best is None or value > self.best:
            self.best, self.best_step = float(value), int(step)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if save and self.save_best and self.output_dir is not None and hasattr(model, "save_pretrained"):
                model.save_pretrained(os.path.join(self.output_dir, "best"))
        elif self.best - value > self.margin and self.best_state is not None:
            model.load_state_dict(self.best_state)
            restored = 1.0
            self.restores += 1
            logger.warning(
                "real success %.3f at step %d fell more than %.3f below the best %.3f (step %d): restored the best policy",
                value,
                step,
                self.margin,
                self.best,
                self.best_step,
            )
        return {
            "eval/best_real_success": self.best,
            "eval/best_step": float(self.best_step),
            "eval/restored": restored,
        }

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or self.metric_key not in logs:
            return
        value = logs[self.metric_key]
        self._pending = (float(value) if value is not None else float("nan"), state.global_step)

    # -- persistence: the best weights travel with every checkpoint, so a resumed run keeps its best
    STATE_FILE = "keep_best_state.safetensors"
    INFO_FILE = "keep_best.json"

    def save_state(self, checkpoint_dir: str) -> None:
        """Write the best weights and value into `checkpoint_dir` (atomically, file by file)."""
        if self.best_state is None:
            return
        from safetensors.torch import save_file

        os.makedirs(checkpoint_dir, exist_ok=True)
        tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in self.best_state.items()}
        tmp = os.path.join(checkpoint_dir, self.STATE_FILE + ".tmp")
        save_file(tensors, tmp)
        os.replace(tmp, os.path.join(checkpoint_dir, self.STATE_FILE))
        info = {"best": self.best, "best_step": self.best_step, "restores": self.restores, "margin": self.margin}
        tmp = os.path.join(checkpoint_dir, self.INFO_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, os.path.join(checkpoint_dir, self.INFO_FILE))

    def load_state(self, checkpoint_dir: str) -> bool:
        """Read what `save_state` wrote; False (and nothing changes) when `checkpoint_dir` holds none."""
        info_path = os.path.join(checkpoint_dir, self.INFO_FILE)
        state_path = os.path.join(checkpoint_dir, self.STATE_FILE)
        if not (os.path.isfile(info_path) and os.path.isfile(state_path)):
            return False
        from safetensors.torch import load_file

        with open(info_path) as f:
            info = json.load(f)
        self.best_state = load_file(state_path)
        self.best, self.best_step = float(info["best"]), int(info["best_step"])
        self.restores = int(info.get("restores", 0))
        logger.info(
            "keep-best: resumed with the best real success %.3f (step %d) from %s",
            self.best,
            self.best_step,
            checkpoint_dir,
        )
        return True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.save_state(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and self.best is None:  # resumed: the trainer state was loaded before this event
            resumed = getattr(self.trainer, "resumed_from", None) or os.path.join(
                args.output_dir, f"checkpoint-{state.global_step}"
            )
            self.load_state(resumed)
        self._act(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._act(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._act(state, model)

    def _act(self, state, model) -> None:
        if self._pending is None:
            return
        value, step = self._pending
        self._pending = None
        if model is None:
            model = getattr(self.trainer, "model", None)
        metrics = self.update(model, value, step, save=state.is_world_process_zero)
        if not metrics:
            return
        if self.trainer is not None:
            self.trainer.log(dict(metrics))  # nested on_log calls carry no metric_key: no recursion
        elif self.log_fn is not None:
            self.log_fn(dict(metrics))
        else:
            state.log_history.append({**metrics, "step": state.global_step})

    def state_snapshot(self) -> dict[str, Any]:
        """The best value/step and restore count (for reports)."""
        return {"best": self.best, "best_step": self.best_step, "restores": self.restores}


__all__ = [
    "AgreementCallback",
    "CoevolutionCallback",
    "KeepBestRealCallback",
    "RealEvalCallback",
    "RefreshWorldCallback",
    "VerifyCallback",
    "classifier_success_probs",
    "fires_at",
    "mask_unverified",
    "masking_active",
    "period_steps",
    "success_confidence",
    "trajectory_success_probs",
]
