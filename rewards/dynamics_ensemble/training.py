"""Chunk pairs from episode datasets, training and held-out evaluation of the dynamics ensemble.

A pair is (full state at observation t, actions t..t+H-1, full state at observation t+H) inside one episode, for
every `stride`-th t whose chunk holds H real actions (`wlarl.data.episodes.window_rows`; windows padded past the
episode end are left out: their padding was never executed). Episodes are split per task into train / held-out.
Every member fits the MSE of the standardised change on its own bootstrap resample of the training pairs (drawn with
replacement, seeded per member), from its own initialisation. Held-out metrics: each member's MSE and the ensemble
mean's (standardised units, over the active output dims), the MSE of predicting no change and of predicting the
mean change, and the correlation between the ensemble's disagreement and its actual error per pair — the property
the MOPO penalty relies on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rewards.dynamics_ensemble.model import (
    DynamicsEnsemble,
    DynamicsEnsembleConfig,
    save_dynamics_ensemble,
)
from rewards.model_files import json_safe, write_atomic
from rewards.rows import Rows, rows_from_datasets, split_by_episode
from wlarl.utils.stats import spearman

METRICS_FILE = "metrics.json"
REQUIRED_COLUMNS = ("full_state", "action", "task_name", "episode_index", "step_index", "is_last")


# ----------------------------------------------------------------------------------------------------------------
# Chunk pairs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ChunkPairs(Rows):
    """R one-chunk transitions.

    Attributes:
        full_states: float32 [R, F] the full state at observation t.
        actions: float32 [R, H, A] actions t..t+H-1.
        next_full_states: float32 [R, F] the full state at observation t+H.
        task_names: R task names.
        episode: int64 [R] episode ids, unique across datasets (splits are by episode).
        step: int64 [R] t, the chunk's first observation index in its episode.
    """

    full_states: np.ndarray
    actions: np.ndarray
    next_full_states: np.ndarray
    task_names: list[str]
    episode: np.ndarray
    step: np.ndarray

    def summary(self) -> dict[str, int]:
        return {"pairs": len(self), "episodes": len(np.unique(self.episode)), "tasks": len(set(self.task_names))}


def chunk_pairs(dataset: Any, horizon: int, stride: int = 1, episode_offset: int = 0) -> ChunkPairs:
    """One-chunk transitions of one episode dataset.

    Args:
        dataset: a dataset folder (`write_episodes` output), an `EpisodeDataset` or a `datasets.Dataset`.
        horizon: H, actions per chunk.
        stride: spacing of chunk starts t within an episode (1: every observation; H: non-overlapping chunks).
        episode_offset: added to ``episode_index`` (keeps ids unique when several datasets are combined).

    Returns:
        ChunkPairs; an episode shorter than H actions gives none.
    """
    from wlarl.data.episodes import window_rows

    if isinstance(dataset, (str, os.PathLike)):
        from wlarl.data import load_episodes

        dataset = load_episodes(Path(dataset))
    name = str(getattr(dataset, "path", None) or "dataset")
    dataset = getattr(dataset, "dataset", dataset)  # EpisodeDataset → datasets.Dataset
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dynamics ensemble: {name} lacks column(s) {missing}; expected an episode dataset written by "
            f"wlarl.data.write_episodes with columns {list(REQUIRED_COLUMNS)}"
        )
    table = dataset.select_columns(list(REQUIRED_COLUMNS)).with_format("arrow")[:]  # no images read
    n = table.num_rows
    full = table.column("full_state").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    full = full.astype(np.float32).reshape(n, -1)  # [rows, F]
    action = table.column("action").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    action = action.astype(np.float32).reshape(n, -1)  # [rows, A]
    tasks = table.column("task_name").to_pylist()
    episode = table.column("episode_index").to_numpy(zero_copy_only=False).astype(np.int64)
    step = table.column("step_index").to_numpy(zero_copy_only=False).astype(np.int64)
    is_last = table.column("is_last").to_numpy(zero_copy_only=False).astype(bool)
    order = np.lexsort((step, episode))  # [rows] by (episode, step)
    episode, step, is_last = episode[order], step[order], is_last[order]
    bounds = np.flatnonzero(np.diff(episode)) + 1
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [n]])
    t_rows, a_rows, next_rows = [], [], []
    for s, e in zip(starts.tolist(), ends.tolist()):
        if not np.array_equal(step[s:e], np.arange(e - s)) or not is_last[e - 1] or is_last[s : e - 1].any():
            raise ValueError(
                f"dynamics ensemble: {name}, episode {int(episode[s])}: expected step_index 0..{e - s - 1} with only "
                f"the final observation is_last; got steps {step[s:e][:5].tolist()}… and is_last at "
                f"{np.flatnonzero(is_last[s:e]).tolist()}"
            )
        if e - s < 2:
            continue
        w = window_rows(s, e, horizon, stride)
        full_windows = w["valid"].all(axis=1)  # H real actions, no padding
        t_rows.append(w["t"][full_windows])
        a_rows.append(w["actions"][full_windows])
        next_rows.append(w["next"][full_windows])
    t = np.concatenate(t_rows) if t_rows else np.zeros(0, np.int64)  # [R] positions in `order`
    a = np.concatenate(a_rows) if a_rows else np.zeros((0, horizon), np.int64)  # [R, H]
    nxt = np.concatenate(next_rows) if next_rows else np.zeros(0, np.int64)  # [R]
    return ChunkPairs(
        full_states=full[order[t]],
        actions=action[order[a]].reshape(len(t), horizon, action.shape[1]),  # [R, H, A]
        next_full_states=full[order[nxt]],
        task_names=[tasks[i] for i in order[t]],
        episode=episode[t] + episode_offset,
        step=step[t],
    )


def chunk_pairs_from_datasets(datasets: Any, horizon: int, stride: int = 1) -> ChunkPairs:
    """`chunk_pairs` of one or more datasets, concatenated, with episode ids kept unique across them."""
    return rows_from_datasets(
        datasets, lambda ds, offset: chunk_pairs(ds, horizon, stride, offset), "dynamics ensemble",
        f"has no episode of at least H={horizon} actions", same_width=("full_states", "actions"),
    )  # fmt: skip


def split_pairs_by_episode(pairs: ChunkPairs, holdout_fraction: float, seed: int = 0) -> tuple[ChunkPairs, ChunkPairs]:
    """(train, held-out): round(holdout_fraction · episodes) of each task's episodes held out, at least one kept for
    training; deterministic in `seed` (`rewards.rows.split_by_episode`)."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"dynamics ensemble: holdout_fraction must be in [0, 1), got {holdout_fraction}")
    train, held = split_by_episode(pairs, [holdout_fraction], seed)
    return train, held


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def fit_dynamics_ensemble(
    model: DynamicsEnsemble,
    train: ChunkPairs,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    bootstrap: bool = True,
    seed: int = 0,
    progress_bar: bool = True,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    log_steps: int = 500,
) -> dict[str, float]:
    """Train every member in place on `train` (normalisation fitted first); returns the last logged losses.

    Member m draws its batches from its own bootstrap resample of the R training pairs (R indices with replacement,
    seeded by seed + m; `bootstrap` False: all pairs), so the members differ in data as well as in initialisation.
    Loss: the sum over members of the MSE over the active output dims of the standardised change.
    """
    if len(train) < 2:
        raise ValueError(f"train_dynamics_ensemble: the training split needs at least 2 pairs, got {train.summary()}")
    m_count = model.config.members
    x = torch.from_numpy(train.full_states).to(model.device)  # [R, F]
    a = torch.from_numpy(train.actions).to(model.device)  # [R, H, A]
    nxt = torch.from_numpy(train.next_full_states).to(model.device)  # [R, F]
    ids = model.task_ids(train.task_names)  # [R]
    model.set_normalisation(x, a, nxt)
    target = model.standardise_change(x, nxt)  # [R, F]
    active = model.out_active.bool()
    r = len(train)
    if bootstrap:
        rows = torch.stack(
            [torch.randint(r, (r,), generator=torch.Generator().manual_seed(seed + m)) for m in range(m_count)]
        )  # [M, R] each member's resample
    else:
        rows = torch.arange(r).expand(m_count, r)  # [M, R]
    rows = rows.to(model.device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = min(100, max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0)))
    )
    model.train()
    metrics: dict[str, float] = {}
    running: list[float] = []
    bar = tqdm(range(1, steps + 1), desc="train_dynamics_ensemble", disable=not progress_bar, mininterval=1.0)
    for step in bar:
        pos = torch.randint(r, (m_count, batch_size), generator=gen).to(model.device)  # [M, B]
        idx = rows.gather(1, pos)  # [M, B] each member's batch from its resample
        flat = idx.reshape(-1)  # [M*B]
        h = model.encode(x[flat], a[flat], ids[flat]).reshape(m_count, batch_size, -1)  # [M, B, D+K]
        err = (model.members_forward(h) - target[idx])[..., active]  # [M, B, F_active]
        loss = err.pow(2).mean(dim=(1, 2)).sum()  # sum over members of each member's MSE
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item() / m_count)
        if step % log_steps == 0 or step == steps:
            metrics = {"train/mse": float(np.mean(running)), "train/lr": sched.get_last_lr()[0]}
            running = []
            bar.set_postfix(mse=f"{metrics['train/mse']:.4f}")
            if log_fn is not None:
                log_fn(step, metrics)
    model.eval()
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def evaluate_dynamics_ensemble(model: DynamicsEnsemble, pairs: ChunkPairs, prefix: str = "heldout/") -> dict[str, Any]:
    """Metrics of `model` on `pairs` (standardised change, active output dims), keys prefixed by `prefix`.

    ``member_<m>_mse``, ``member_mse_mean`` and ``ensemble_mse`` (the members' mean prediction); the baselines
    ``zero_change_mse`` (predicting no change) and ``mean_change_mse`` (predicting the training mean change);
    ``disagreement_mean`` (see `DynamicsEnsemble.spread`), ``error_mean`` (the ensemble mean's mean absolute error
    per pair, the units of the disagreement), and the Pearson / Spearman correlation of disagreement and error per
    pair (``disagreement_error_pearson`` / ``_spearman``) next to a baseline, the Spearman correlation of the error
    with the size of the predicted change (``motion_error_spearman``: fast motion is harder to predict; the
    disagreement should tell more than that); ``error_top_decile`` / ``error_rest``: the mean error of the tenth of
    the pairs with the largest disagreement and of the others.
    """
    if len(pairs) == 0:
        return {f"{prefix}pairs": 0}
    preds = model.predict(torch.from_numpy(pairs.full_states), torch.from_numpy(pairs.actions), pairs.task_names)
    target = model.standardise_change(
        torch.from_numpy(pairs.full_states), torch.from_numpy(pairs.next_full_states)
    ).cpu()  # [R, F]
    active = model.out_active.cpu().bool()
    p, y = preds[..., active], target[:, active]  # [M, R, F_active], [R, F_active]
    mean = p.mean(dim=0)  # [R, F_active]
    zero = (-model.out_mean / model.out_std).cpu()[active]  # the standardised value of "no change"
    u = model.spread(preds).numpy()  # [R]
    e = (mean - y).abs().mean(dim=1).numpy()  # [R]
    motion = (mean - zero).abs().mean(dim=1).numpy()  # [R] size of the predicted change: the baseline uncertainty
    top = u >= np.quantile(u, 0.9)
    out: dict[str, Any] = {f"member_{m}_mse": float((p[m] - y).pow(2).mean()) for m in range(len(p))}
    out.update(
        {
            "pairs": len(pairs),
            "episodes": len(np.unique(pairs.episode)),
            "active_output_dims": int(active.sum()),
            "member_mse_mean": float((p - y).pow(2).mean()),
            "ensemble_mse": float((mean - y).pow(2).mean()),
            "zero_change_mse": float((zero - y).pow(2).mean()),
            "mean_change_mse": float(y.pow(2).mean()),
            "disagreement_mean": float(u.mean()),
            "error_mean": float(e.mean()),
            "disagreement_error_pearson": _pearson(u, e),
            "disagreement_error_spearman": spearman(u, e, constant=float("nan")),
            "motion_error_spearman": spearman(motion, e, constant=float("nan")),
            "error_top_decile": float(e[top].mean()),
            "error_rest": float(e[~top].mean()) if (~top).any() else float("nan"),
        }
    )
    return {f"{prefix}{k}": v for k, v in out.items()}


def train_dynamics_ensemble(
    dataset_paths: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    *,
    horizon: int = 8,
    stride: int = 1,
    members: int = 5,
    hidden: int = 128,
    layers: int = 2,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    bootstrap: bool = True,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    progress_bar: bool = True,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    extra_pairs: ChunkPairs | None = None,
) -> tuple[DynamicsEnsemble, dict[str, Any]]:
    """Train and evaluate a dynamics ensemble on episode datasets.

    Args:
        dataset_paths: one or more `write_episodes` folders (or loaded datasets).
        output_dir: when given, the ensemble goes to ``output_dir/final`` and the metrics to
            ``output_dir/metrics.json``.
        horizon: H, actions per chunk (the policy's chunk size).
        stride: spacing of chunk starts within an episode.
        members, hidden, layers: ensemble config (`DynamicsEnsembleConfig`); member m is initialised from seed + m.
        steps, batch_size, lr, weight_decay: AdamW with warm-up then cosine decay; batch_size pairs per member.
        bootstrap: each member trains on its own bootstrap resample of the training pairs.
        holdout_fraction: episodes per task held out for the metrics.
        progress_bar: show a tqdm bar.
        log_fn: called as log_fn(step, losses) every 500 steps and at the end.
        extra_pairs: more transitions beside the datasets' (e.g. replayed counterfactual branches: several chunks from
            each same state), split by their own episode ids with the rest; keep those ids clear of the datasets'.

    Returns:
        (the trained ensemble, in eval mode; the metrics written to metrics.json).
    """
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"train_dynamics_ensemble: steps ({steps}) and batch_size ({batch_size}) must be > 0")
    if horizon < 1 or stride < 1:
        raise ValueError(f"train_dynamics_ensemble: horizon ({horizon}) and stride ({stride}) must be ≥ 1")
    t0 = time.perf_counter()
    pairs = chunk_pairs_from_datasets(dataset_paths, horizon, stride)
    if extra_pairs is not None:
        pairs = ChunkPairs.cat([pairs, extra_pairs])
    train, heldout = split_pairs_by_episode(pairs, holdout_fraction, seed)
    config = DynamicsEnsembleConfig(
        full_state_dim=int(pairs.full_states.shape[1]),
        action_dim=int(pairs.actions.shape[2]),
        horizon=horizon,
        tasks=sorted(set(pairs.task_names)),
        members=members,
        hidden=hidden,
        layers=layers,
        seed=seed,
    )
    model = DynamicsEnsemble(config)
    metrics: dict[str, Any] = {}
    for name, part in (("all", pairs), ("train", train), ("heldout", heldout)):
        metrics.update({f"data/{name}_{k}": v for k, v in part.summary().items()})
    metrics.update(
        fit_dynamics_ensemble(
            model,
            train,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            bootstrap=bootstrap,
            seed=seed,
            progress_bar=progress_bar,
            log_fn=log_fn,
        )
    )
    metrics.update(evaluate_dynamics_ensemble(model, heldout, "heldout/"))
    metrics["time/total_s"] = time.perf_counter() - t0
    metrics = json_safe(metrics)
    if output_dir is not None:
        out = Path(output_dir)
        save_dynamics_ensemble(model, out / "final")
        text = json.dumps(metrics, indent=2)
        write_atomic(out / METRICS_FILE, lambda p: p.write_text(text))
    return model, metrics
