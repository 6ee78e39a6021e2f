"""Training, calibration and evaluation of the success classifier, and World-Expert-predicted frames.

`augment_images` (blur, down-up resampling, noise, small shifts, colour jitter) imitates a World Expert's decoded
frames so that a classifier trained on real frames holds on predicted ones. Used by recipes/train_reward.py and
benchmarks/bench_rewards.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rewards.success_classifier.calibration import (
    auroc,
    choose_threshold,
    classification_metrics,
    fit_platt,
    reliability_table,
)
from rewards.success_classifier.labels import FrameSet, frames_from_dataset, sampling_weights
from rewards.success_classifier.model import SuccessClassifier, images_to_float
from wlarl.data.episodes import window_rows
from wlarl.types import Observation
from wlarl.utils.stats import spearman


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur. x float [N, 3, H, W]; sigma [N] (0 = identity)."""
    radius = 3
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)  # [K]
    s = sigma.clamp(min=1e-3)[:, None]
    k = torch.exp(-(coords[None] ** 2) / (2 * s**2))  # [N, K]
    k = k / k.sum(dim=1, keepdim=True)
    n, c, h, w = x.shape
    xp = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    kx = k.repeat_interleave(c, dim=0)  # [N*3, K]
    xp = F.conv2d(xp, kx[:, None, None, :], groups=n * c)  # horizontal
    xp = F.conv2d(xp, kx[:, None, :, None], groups=n * c)  # vertical
    return xp.reshape(n, c, h, w)


def augment_images(x: torch.Tensor, generator: torch.Generator | None = None, strength: float = 1.0) -> torch.Tensor:
    """Random blur, down-up resampling, shift, colour jitter and noise.

    Args:
        x: float [N, 3, H, W] in [0, 1].
        generator: torch RNG for reproducibility.
        strength: scales every perturbation (0 = identity).

    Returns:
        float [N, 3, H, W] in [0, 1].
    """
    if strength <= 0:
        return x
    n, _, h, w = x.shape
    g = generator

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, device=x.device)

    # small shifts: pad by replication and crop a random window (±3 px)
    pad = max(1, round(3 * strength))
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = (rand(n) * (2 * pad + 1)).long()
    dy = (rand(n) * (2 * pad + 1)).long()
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None]).clamp(max=h + 2 * pad - 1)  # [N, H]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None]).clamp(max=w + 2 * pad - 1)  # [N, W]
    x = xp[
        torch.arange(n)[:, None, None, None],
        torch.arange(3)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    # Gaussian blur on about half the images (World Expert frames are soft)
    sigma = torch.where(rand(n) < 0.5, rand(n) * 1.5 * strength, torch.zeros(n, device=x.device))
    x = _gaussian_blur(x, sigma)
    # down-up resampling on a third (the decoder's coarse latent grid)
    down = rand(n) < 0.33 * strength
    if bool(down.any()):
        factor = 2 if float(rand(1)) < 0.5 else 4
        small = F.interpolate(x[down], scale_factor=1 / factor, mode="bilinear", align_corners=False, antialias=True)
        x = x.clone()
        x[down] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    # colour jitter: brightness, contrast, saturation
    b = 1 + (rand(n, 1, 1, 1) - 0.5) * 0.3 * strength
    c = 1 + (rand(n, 1, 1, 1) - 0.5) * 0.4 * strength
    s = 1 + (rand(n, 1, 1, 1) - 0.5) * 0.4 * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * s + gray
    x = x * b
    # pixel noise
    x = x + torch.randn(x.shape, generator=g, device=x.device) * (rand(n, 1, 1, 1) * 0.04 * strength)
    return x.clamp(0.0, 1.0)


def train_success_classifier(
    model: SuccessClassifier,
    train: FrameSet,
    val: FrameSet | None = None,
    *,
    max_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    hard_negative_fraction: float = 0.25,
    augment_strength: float = 1.0,
    eval_steps: int = 200,
    seed: int = 0,
    log_fn: Any = None,
    progress_coef: float = 1.0,
) -> dict[str, float]:
    """Train `model` with weighted sampling (positives / hard negatives / other negatives) and augmentation.

    With a progress head the loss adds `progress_coef` · BCE(progress logit, frame progress) on the frames whose
    progress is known (a soft target in [0, 1]).

    Args:
        model: the classifier (trained in place).
        train: labelled training frames.
        val: frames for periodic AUROC (optional).
        log_fn: called as log_fn(step, metrics_dict) every `eval_steps` and at the end.
        progress_coef: weight of the progress loss (models with ``progress_head`` only).

    Returns:
        The last logged metrics.
    """
    if not train.labels.any() or train.labels.all():
        raise ValueError(
            f"train_reward: the training split needs both successful and failed frames, got {train.summary()}; "
            f"collect episodes with failures (noise modes) and successes"
        )
    with_progress = bool(model.config.progress_head)
    if with_progress and not np.isfinite(train.progress).any():
        raise ValueError(
            "train_reward: the model has a progress head but no training frame has a progress target; the episode "
            "dataset needs its `reward` column (the simulator's shaped reward)"
        )
    progress = torch.from_numpy(np.nan_to_num(train.progress, nan=0.0)).float()  # [M]
    has_progress = torch.from_numpy(np.isfinite(train.progress))  # [M]
    gen = torch.Generator().manual_seed(seed)
    weights = torch.from_numpy(sampling_weights(train, hard_negative_fraction))
    images = torch.from_numpy(train.images)  # uint8 [M, H, W, 3]
    labels = torch.from_numpy(train.labels).float()  # [M]
    task_ids = model.task_ids(train.task_names)  # [M]
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s / max(max_steps, 1), 1.0)))
    )
    model.train()
    metrics: dict[str, float] = {}
    running = []
    for step in range(1, max_steps + 1):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=gen)  # [B]
        x = images_to_float(images[idx].to(model.device), model.config.image_size)  # [B, 3, s, s]
        x = augment_images(x, gen, augment_strength)
        if with_progress:
            logits, progress_logits = model(x, task_ids[idx], return_progress=True)
        else:
            logits = model(x, task_ids[idx])
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx].to(logits.device))
        if with_progress:
            known = has_progress[idx].to(logits.device)
            if bool(known.any()):
                target = progress[idx].to(logits.device)
                p_loss = F.binary_cross_entropy_with_logits(progress_logits[known], target[known])
                loss = loss + progress_coef * p_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % eval_steps == 0 or step == max_steps:
            metrics = {"train/loss": float(np.mean(running)), "train/lr": sched.get_last_lr()[0]}
            running = []
            if val is not None and len(val):
                probs = torch.sigmoid(_raw_logits(model, val))
                metrics["val/auroc"] = auroc(probs.numpy(), val.labels)
                if with_progress:
                    metrics.update(progress_metrics(model, val, "val/"))
            model.train()
            if log_fn is not None:
                log_fn(step, metrics)
    model.eval()
    return metrics


def _raw_logits(model: SuccessClassifier, frames: FrameSet, batch_size: int = 256) -> torch.Tensor:
    """Uncalibrated logits float [M] of `frames` (the model is left in eval mode, as before calibration)."""
    logits = model.forward_batched(torch.from_numpy(frames.images), frames.task_names, batch_size)
    model.eval()
    return logits


def progress_metrics(model: SuccessClassifier, frames: FrameSet, prefix: str) -> dict[str, float]:
    """Spearman of the predicted progress with the frames' real progress, on all frames with one and on the failed
    (unsolved) ones: keys `prefix` + progress_spearman / progress_spearman_unsolved / progress_mae. Empty without a
    progress head or targets."""
    if not model.config.progress_head:
        return {}
    known = np.isfinite(frames.progress)
    if known.sum() < 2:
        return {}
    sub = frames.subset(np.flatnonzero(known))
    pred = model.predict_progress(torch.from_numpy(sub.images), sub.task_names).numpy()
    out = {
        f"{prefix}progress_spearman": spearman(pred, sub.progress, constant=float("nan")),
        f"{prefix}progress_mae": float(np.abs(pred - sub.progress).mean()),
    }
    unsolved = ~sub.labels
    if unsolved.sum() >= 2:
        out[f"{prefix}progress_spearman_unsolved"] = spearman(
            pred[unsolved], sub.progress[unsolved], constant=float("nan")
        )
    return out


def calibrate_classifier(model: SuccessClassifier, val: FrameSet, rule: str = "f1") -> dict[str, float]:
    """Fit Platt scaling and the decision threshold on `val`, store them in `model.config`, return them."""
    logits = _raw_logits(model, val).numpy()
    a, b = fit_platt(logits, val.labels)
    probs = 1.0 / (1.0 + np.exp(-(a * logits + b)))
    threshold = choose_threshold(probs, val.labels, rule)
    model.config.platt_scale, model.config.platt_bias, model.config.threshold = a, b, threshold
    return {"calibration/platt_scale": a, "calibration/platt_bias": b, "calibration/threshold": threshold}


def evaluate_classifier(model: SuccessClassifier, frames: FrameSet, prefix: str, bins: int = 10) -> dict[str, Any]:
    """Calibrated metrics on `frames` (keys `prefix` + auroc/ece/…) and the reliability table under `prefix` + reliability."""
    probs = model.predict_proba(torch.from_numpy(frames.images), frames.task_names).numpy()
    out = classification_metrics(probs, frames.labels, model.config.threshold, prefix)
    out[f"{prefix}reliability"] = reliability_table(probs, frames.labels, bins)
    if frames.hard_negative.any():  # how often the arm-in-success-pose negatives fool the classifier
        out[f"{prefix}hard_negative_false_positive_rate"] = float(
            (probs[frames.hard_negative] >= model.config.threshold).mean()
        )
    out.update(progress_metrics(model, frames, prefix))
    return out


def predicted_frames(
    policy: Any,
    dataset: Any,
    horizon: int,
    episodes: Sequence[int] | None = None,
    max_windows: int | None = 2000,
    stride: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    keep_hard_negatives: bool = False,
    hard_negative_radius: float = 0.05,
    early_fraction: float = 0.3,
) -> FrameSet:
    """World-Expert-predicted subgoal frames labelled with the real outcome.

    For windows (episode, t): the policy's World Expert imagines the frame at t+H from the real frame and state at
    t and the recorded actions t..t+H-1 (`policy.imagine(obs, actions, decode=True).images`); its label is the
    real frame label at t+H (clamped to the episode end).

    Args:
        policy: object with `imagine(Observation, actions [N,H,A], decode=True) -> WorldPrediction`.
        dataset: episode dataset (Dataset, path or EpisodeDataset).
        horizon: H, actions per chunk.
        episodes: restrict to these episode ids (e.g. a held-out split).
        max_windows: subsample to at most this many windows (up to half positives).
        keep_hard_negatives: when subsampling, keep windows whose real target frame is a hard negative (up to a
            quarter) — for fine-tuning, so the arm-pose shortcut stays penalised on predicted frames.
        hard_negative_radius, early_fraction: as in `frames_from_dataset`.

    Returns:
        FrameSet of predicted frames (hard_negative marks windows whose real frame is a hard negative).
    """
    if isinstance(dataset, (str, Path)):
        from datasets import load_from_disk

        dataset = load_from_disk(str(dataset))
    dataset = getattr(dataset, "dataset", dataset)
    real = frames_from_dataset(dataset, hard_negative_radius, early_fraction)
    cols = dataset.with_format("numpy")
    state = np.asarray(cols["state"], dtype=np.float32)
    action = np.asarray(cols["action"], dtype=np.float32)
    step = np.asarray(cols["step_index"], dtype=np.int64)
    instructions = [str(s) for s in dataset["instruction"]]
    keep_eps = None if episodes is None else set(int(e) for e in episodes)
    windows = []  # (row at t, action rows t..t+H-1, row at t+H), dataset rows
    order = np.lexsort((step, real.episode))
    ep_sorted = real.episode[order]
    bounds = np.flatnonzero(np.r_[True, ep_sorted[1:] != ep_sorted[:-1], True])
    for s, e in zip(bounds[:-1], bounds[1:]):  # positions [s, e) of `order` hold one episode, in step order
        if keep_eps is not None and int(ep_sorted[s]) not in keep_eps:
            continue
        w = window_rows(s, e, horizon, stride)  # positions in `order`
        t, act, nxt = order[w["t"]], order[w["actions"]], order[w["next"]]  # dataset rows [W], [W, H], [W]
        windows.extend(zip(t.tolist(), act.tolist(), nxt.tolist()))
    if not windows:
        raise ValueError("predicted_frames: no windows (empty dataset or no matching episodes)")
    rng = np.random.default_rng(seed)
    if max_windows is not None and len(windows) > max_windows:
        pos = [w for w in windows if real.labels[w[2]]]
        hard = [w for w in windows if real.hard_negative[w[2]]]  # never labelled positive
        neg = [w for w in windows if not real.labels[w[2]] and not real.hard_negative[w[2]]]
        k_pos = min(len(pos), max_windows // 2)
        k_hard = min(len(hard), max_windows // 4) if keep_hard_negatives else 0
        pick_pos = [pos[i] for i in rng.choice(len(pos), k_pos, replace=False)] if k_pos else []
        pick_hard = [hard[i] for i in rng.choice(len(hard), k_hard, replace=False)] if k_hard else []
        if not keep_hard_negatives:
            neg = neg + hard
        k_neg = min(len(neg), max_windows - k_pos - k_hard)
        pick_neg = [neg[i] for i in rng.choice(len(neg), k_neg, replace=False)] if k_neg else []
        windows = pick_pos + pick_hard + pick_neg
    images_out = []
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        obs = Observation.from_dicts(
            {
                "image": real.images[r],
                "state": state[r],
                "instruction": instructions[r],
                "task_name": real.task_names[r],
            }
            for r, _, _ in chunk
        )
        acts = torch.from_numpy(np.stack([action[w[1]] for w in chunk]))  # [n, H, A]
        with torch.no_grad():
            pred = policy.imagine(obs, acts, decode=True)
        if pred.images is None:
            raise ValueError("predicted_frames: policy.imagine(..., decode=True) returned no images")
        images_out.append(pred.images.cpu().numpy().astype(np.uint8))
    target = np.array([w[2] for w in windows])
    return replace(real.subset(target), images=np.concatenate(images_out))  # real labels, predicted frames
