"""Training, calibration and evaluation of the state reward model (used by recipes/train_state_reward.py).

Loss: BCE on success with ``pos_weight`` = negatives / positives (successes are a few percent of the states) plus
``progress_weight`` · MSE of the progress head against clip(reward / reward_scale, 0, 1), plus, with a value head,
``value_weight`` · BCE of the value logit against the soft target value_discount ** k (k: env steps to the episode's
next successful state; 0 when none follows). Episodes are split per task into train / calibration / held-out; Platt
scaling and the threshold are fitted on the calibration episodes, the metrics are reported on the held-out ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rewards.model_files import json_safe, write_atomic
from rewards.state_reward.data import (
    StateRows,
    split_by_episode,
    state_rows_from_datasets,
    steps_to_success,
    value_targets,
)
from rewards.state_reward.model import (
    METAWORLD_FULL_STATE_DIM,
    StateRewardConfig,
    StateRewardModel,
    save_state_reward,
)
from rewards.success_classifier.calibration import choose_threshold, fit_platt
from wlarl.utils.stats import auroc, spearman

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
VALUE_AUROC_STEPS = 24  # held-out value AUROC: "succeeds within the next 24 env steps" (3 chunks of 8)


def progress_targets(reward: np.ndarray, reward_scale: float) -> np.ndarray:
    """float32 [M]: clip(reward / reward_scale, 0, 1)."""
    return np.clip(np.asarray(reward, dtype=np.float32) / reward_scale, 0.0, 1.0)


@torch.no_grad()
def _raw_outputs(model: StateRewardModel, rows: StateRows, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated success logits and progress of `rows`, float [M] each."""
    model.eval()
    x = torch.from_numpy(rows.full_states)
    ids = model.task_ids(rows.task_names)
    logits, progress = [], []
    for i in range(0, len(rows), batch_size):
        z, p, _ = model(x[i : i + batch_size], ids[i : i + batch_size])
        logits.append(z.cpu())
        progress.append(p.cpu())
    if not logits:
        return np.zeros(0), np.zeros(0)
    return torch.cat(logits).numpy(), torch.cat(progress).numpy()


def fit_state_reward(
    model: StateRewardModel,
    train: StateRows,
    *,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    progress_weight: float = 1.0,
    value_weight: float = 1.0,
    seed: int = 0,
    progress_bar: bool = True,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    log_steps: int = 500,
) -> dict[str, float]:
    """Train `model` in place on `train` (normalisation fitted first); returns the last logged losses.

    The value loss (weight `value_weight`) is used when ``model.config.value_head`` is set.
    """
    if not train.success.any() or train.success.all():
        raise ValueError(
            f"train_state_reward: the training split needs both successful and failed states, got {train.summary()}; "
            f"collect episodes with failures (noise modes) and successes"
        )
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(train.full_states).to(model.device)  # [M, F]
    ids = model.task_ids(train.task_names)  # [M]
    y = torch.from_numpy(train.success).float().to(model.device)  # [M]
    target = torch.from_numpy(progress_targets(train.reward, model.config.reward_scale)).to(model.device)  # [M]
    value_target = torch.from_numpy(value_targets(train, model.config.value_discount)).to(model.device)  # [M]
    model.set_normalisation(x)
    pos = float(train.success.sum())
    pos_weight = torch.tensor((len(train) - pos) / pos, device=model.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = min(100, max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0)))
    )
    model.train()
    metrics: dict[str, float] = {}
    running: list[tuple[float, float, float]] = []
    bar = tqdm(range(1, steps + 1), desc="train_state_reward", disable=not progress_bar, mininterval=1.0)
    for step in bar:
        idx = torch.randint(len(train), (batch_size,), generator=gen).to(model.device)  # [B]
        logit, progress, value_logit = model(x[idx], ids[idx])
        success_loss = F.binary_cross_entropy_with_logits(logit, y[idx], pos_weight=pos_weight)
        progress_loss = F.mse_loss(progress, target[idx])
        loss = success_loss + progress_weight * progress_loss
        value_loss = torch.zeros(())
        if value_logit is not None:  # BCE with a soft target: its minimiser is the expected discounted success
            value_loss = F.binary_cross_entropy_with_logits(value_logit, value_target[idx])
            loss = loss + value_weight * value_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append((success_loss.item(), progress_loss.item(), value_loss.item()))
        if step % log_steps == 0 or step == steps:
            s, p, v = np.mean(running, axis=0)
            running = []
            metrics = {
                "train/success_loss": float(s),
                "train/progress_loss": float(p),
                **({"train/value_loss": float(v)} if model.config.value_head else {}),
                "train/lr": sched.get_last_lr()[0],
            }
            bar.set_postfix(success_loss=f"{s:.4f}", progress_loss=f"{p:.4f}")
            if log_fn is not None:
                log_fn(step, metrics)
    model.eval()
    return metrics


def calibrate_state_reward(model: StateRewardModel, rows: StateRows, rule: str = "f1") -> dict[str, float]:
    """Fit Platt scaling and the threshold (rule "f1" or "youden") on `rows`, store them in `model.config`."""
    logits, _ = _raw_outputs(model, rows)
    a, b = fit_platt(logits, rows.success)
    probs = torch.sigmoid(torch.from_numpy(a * logits + b)).numpy()
    threshold = choose_threshold(probs, rows.success, rule)
    model.config.platt_scale, model.config.platt_bias, model.config.threshold = a, b, threshold
    return {"calibration/platt_scale": a, "calibration/platt_bias": b, "calibration/threshold": threshold}


def evaluate_state_reward(model: StateRewardModel, rows: StateRows, prefix: str = "heldout/") -> dict[str, Any]:
    """Metrics of `model` on `rows`, keys prefixed by `prefix`.

    Success: AUROC, accuracy, balanced accuracy, precision, recall at the threshold, positives/negatives; episode
    accuracy (some state ≥ threshold vs the episode succeeded, as the "max" mode scores a trajectory). Progress: MSE
    and Spearman against clip(reward / reward_scale, 0, 1). Value (with a value head): MAE and Spearman against the
    target value_discount ** k, AUROC for "succeeds within the next 24 env steps" (k ≤ 24) over all states and over
    the states not yet successful (``value_auroc_unsuccessful``: what a branch that did not finish is scored on), and
    ``value_positives``, the states that succeed within those 24 steps. Per
    task: ``<prefix><task>/success_auroc`` where both classes occur.
    """
    if len(rows) == 0:
        return {f"{prefix}rows": 0}
    probs, progress = model.predict(torch.from_numpy(rows.full_states), rows.task_names)
    p, prog = probs.numpy(), progress.numpy()
    y = rows.success
    pred = p >= model.config.threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    tpr = tp / max(int(y.sum()), 1)
    tnr = int((~pred & ~y).sum()) / max(int((~y).sum()), 1)
    target = progress_targets(rows.reward, model.config.reward_scale)
    episodes = np.unique(rows.episode)
    ep_pred = np.array([pred[rows.episode == e].any() for e in episodes])
    ep_true = np.array([y[rows.episode == e].any() for e in episodes])
    out: dict[str, Any] = {
        "success_auroc": auroc(p, y),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": 0.5 * (tpr + tnr) if y.any() and (~y).any() else float("nan"),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "episodes": len(episodes),
        "episode_success_accuracy": float((ep_pred == ep_true).mean()),
        "progress_mse": float(np.mean((prog - target) ** 2)),
        "progress_spearman": spearman(prog, target, constant=float("nan")),
    }
    if model.config.value_head:
        value = model.predict_value(torch.from_numpy(rows.full_states), rows.task_names).numpy()
        value_target = value_targets(rows, model.config.value_discount)
        soon = steps_to_success(rows) <= VALUE_AUROC_STEPS  # [M] succeeds within the next 24 env steps
        out.update(
            {
                "value_mae": float(np.mean(np.abs(value - value_target))),
                "value_spearman": spearman(value, value_target, constant=float("nan")),
                "value_auroc": auroc(value, soon),
                "value_auroc_unsuccessful": auroc(value[~y], soon[~y]),
                "value_positives": int(soon.sum()),
            }
        )
    tasks = np.asarray(rows.task_names)
    for task in sorted(set(rows.task_names)):
        m = tasks == task
        if y[m].any() and (~y[m]).any():
            out[f"{task}/success_auroc"] = auroc(p[m], y[m])
    return {f"{prefix}{k}": v for k, v in out.items()}


def train_state_reward(
    dataset_paths: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    *,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    hidden: int = 128,
    layers: int = 2,
    features: str = "auto",
    reward_scale: float = 10.0,
    progress_weight: float = 1.0,
    value_head: bool = True,
    value_discount: float = 0.99,
    value_weight: float = 1.0,
    holdout_fraction: float = 0.1,
    calibration_fraction: float = 0.1,
    threshold_rule: str = "f1",
    seed: int = 0,
    progress_bar: bool = True,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[StateRewardModel, dict[str, Any]]:
    """Train, calibrate and evaluate a state reward model on episode datasets.

    Rows are every observation after an action (`rewards.state_reward.data.state_rows`). Each task's episodes are
    split (deterministically in `seed`) into train, calibration (`calibration_fraction`: Platt scaling and the
    threshold) and held-out (`holdout_fraction`: the reported metrics). A calibration split without both classes
    falls back to the training rows (optimistic; logged, and ``calibration/source`` says so).

    Args:
        dataset_paths: one or more `write_episodes` folders (or loaded datasets).
        output_dir: when given, the model goes to ``output_dir/final`` and the metrics to ``output_dir/metrics.json``.
        steps, batch_size, lr, weight_decay: AdamW with warm-up then cosine decay.
        hidden, layers, reward_scale: model config (`StateRewardConfig`).
        features: "metaworld", "raw", or "auto" (metaworld when the full state is 39-d).
        progress_weight: weight of the progress MSE (0 trains the success head alone).
        value_head, value_discount: a value head (discounted success-to-go, γ = value_discount per env step).
        value_weight: weight of the value BCE.
        threshold_rule: "f1" or "youden" (balanced accuracy).
        progress_bar: show a tqdm bar.
        log_fn: called as log_fn(step, losses) every 500 steps and at the end.

    Returns:
        (the trained model, in eval mode; the metrics written to metrics.json).
    """
    if (
        not 0 <= holdout_fraction < 1
        or not 0 <= calibration_fraction < 1
        or holdout_fraction + calibration_fraction >= 1
    ):
        raise ValueError(
            f"train_state_reward: holdout_fraction ({holdout_fraction}) and calibration_fraction "
            f"({calibration_fraction}) must be in [0, 1) with a sum below 1"
        )
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"train_state_reward: steps ({steps}) and batch_size ({batch_size}) must be > 0")
    t0 = time.perf_counter()
    rows = state_rows_from_datasets(dataset_paths)
    train, calib, heldout = split_by_episode(rows, [calibration_fraction, holdout_fraction], seed)
    full_dim = rows.full_states.shape[1]
    if features == "auto":
        features = "metaworld" if full_dim == METAWORLD_FULL_STATE_DIM else "raw"
    config = StateRewardConfig(
        full_state_dim=full_dim,
        tasks=sorted(set(rows.task_names)),
        hidden=hidden,
        layers=layers,
        features=features,
        reward_scale=reward_scale,
        value_head=value_head,
        value_discount=value_discount,
    )
    torch.manual_seed(seed)  # the initial weights, whatever ran before
    model = StateRewardModel(config)
    metrics: dict[str, Any] = {}
    for name, part in (("all", rows), ("train", train), ("calibration", calib), ("heldout", heldout)):
        metrics.update({f"data/{name}_{k}": v for k, v in part.summary().items()})
    metrics.update(
        fit_state_reward(
            model,
            train,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            progress_weight=progress_weight,
            value_weight=value_weight,
            seed=seed,
            progress_bar=progress_bar,
            log_fn=log_fn,
        )
    )
    source = "calibration"
    if not (calib.success.any() and (~calib.success).any()):
        logger.warning(
            "train_state_reward: the calibration split %s lacks a class; calibrating on the training rows "
            "(optimistic). Collect more episodes for a held-out calibration.",
            calib.summary(),
        )
        calib, source = train, "train"
    metrics.update(calibrate_state_reward(model, calib, threshold_rule))
    metrics["calibration/source"] = source
    metrics["calibration/rule"] = threshold_rule
    metrics.update(evaluate_state_reward(model, heldout, "heldout/"))
    metrics["time/total_s"] = time.perf_counter() - t0
    metrics = json_safe(metrics)
    if output_dir is not None:
        out = Path(output_dir)
        save_state_reward(model, out / "final")
        text = json.dumps(metrics, indent=2)
        write_atomic(out / METRICS_FILE, lambda p: p.write_text(text))
    return model, metrics
