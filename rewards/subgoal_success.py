"""Subgoal success reward model: a learned classifier of task success from a (predicted) subgoal image and the task.

Pieces, top to bottom:

- `SuccessClassifierConfig` / `SuccessClassifier`: a small conv net on 64 px frames conditioned on the task (an
  embedding over a task vocabulary saved with the model; FiLM on the pooled features), one logit per image. Platt
  scaling (``platt_scale``, ``platt_bias``) and the decision ``threshold`` are fitted on a validation split and saved
  in the config, so ``save_pretrained`` / ``from_pretrained`` (safetensors) round-trip everything.
- Frame labels and hard negatives from an episode dataset (docs/internals.md schema): frame t of an episode shows
  success when ``success`` was set by the action at t-1. Hard negatives are frames of *failed* episodes whose hand
  is within ``hard_negative_radius`` of where successful episodes' hands were when they succeeded — the arm is in
  the success pose but the object is not, so a classifier that reads the arm gets them wrong (DESIGN.md).
- `augment_images`: blur, down-up resampling, noise, small shifts and colour jitter, imitating a World Expert's
  decoded frames so that a classifier trained on real frames holds on predicted ones.
- Metrics: AUROC, reliability table, expected calibration error, Platt fit, threshold choice.
- `SubgoalSuccessReward`: the reward — per-chunk success probability [N, T] and a per-row value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from rewards.base import last_alive_index, reward_factory

# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class SuccessClassifierConfig(PretrainedConfig):
    """Config of `SuccessClassifier`.

    Args:
        task_names: the task vocabulary (order defines the embedding rows).
        image_size: input side in pixels (frames of another size are resized bilinearly).
        channels: output channels of the stride-2 conv blocks (len 4 → 64 px becomes a 4×4 grid).
        hidden_size: width of the MLP head.
        task_embed_dim: size of the task embedding.
        dropout: dropout before the output layer.
        platt_scale, platt_bias: calibration, p = sigmoid(platt_scale · logit + platt_bias).
        threshold: decision threshold on the calibrated probability.
    """

    model_type = "wlarl_success_classifier"

    def __init__(
        self,
        task_names: Sequence[str] = (),
        image_size: int = 64,
        channels: Sequence[int] = (32, 64, 128, 128),
        hidden_size: int = 128,
        task_embed_dim: int = 32,
        dropout: float = 0.1,
        platt_scale: float = 1.0,
        platt_bias: float = 0.0,
        threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self.task_names = list(task_names)
        self.image_size = int(image_size)
        self.channels = list(channels)
        self.hidden_size = int(hidden_size)
        self.task_embed_dim = int(task_embed_dim)
        self.dropout = float(dropout)
        self.platt_scale = float(platt_scale)
        self.platt_bias = float(platt_bias)
        self.threshold = float(threshold)
        super().__init__(**kwargs)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"SuccessClassifierConfig.task_names must be unique, got {self.task_names}")
        if self.image_size % (2 ** len(self.channels)) != 0:
            raise ValueError(
                f"SuccessClassifierConfig: image_size {self.image_size} must be divisible by 2**len(channels) "
                f"= {2 ** len(self.channels)}"
            )


def images_to_float(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or float [N, 3, H, W] in [0, 1]) → float [N, 3, image_size, image_size] in [0, 1]."""
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"success classifier: expected uint8 images [N, H, W, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
    else:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"success classifier: expected float images [N, 3, H, W], got {tuple(images.shape)}")
        x = images.float()
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


class SuccessClassifier(PreTrainedModel):
    """Task-conditioned success classifier: frame + task → logit.

    Example:
        >>> model = SuccessClassifier(SuccessClassifierConfig(task_names=["reach-v3"]))
        >>> probs = model.predict_proba(images_uint8_NHW3, ["reach-v3"] * len(images_uint8_NHW3))  # doctest: +SKIP
    """

    config_class = SuccessClassifierConfig
    base_model_prefix = "success_classifier"
    main_input_name = "images"

    def __init__(self, config: SuccessClassifierConfig) -> None:
        super().__init__(config)
        if not config.task_names:
            raise ValueError("SuccessClassifierConfig.task_names is empty: give the task vocabulary")
        blocks, c_in = [], 3
        for c in config.channels:
            blocks += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*blocks)
        grid = config.image_size // (2 ** len(config.channels))
        self.proj = nn.Linear(c_in * grid * grid, config.hidden_size)
        self.task_embed = nn.Embedding(len(config.task_names), config.task_embed_dim)
        self.film = nn.Linear(config.task_embed_dim, 2 * config.hidden_size)
        self.head = nn.Sequential(
            nn.SiLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden_size, config.hidden_size), nn.SiLU()
        )
        self.out = nn.Linear(config.hidden_size, 1)
        self.task_bias = nn.Embedding(len(config.task_names), 1)
        self._index = {name: i for i, name in enumerate(config.task_names)}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding) and module is self.task_bias:
            nn.init.zeros_(module.weight)
        elif isinstance(module, nn.Linear) and module is getattr(self, "film", None):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def task_ids(self, task_names: Sequence[str]) -> torch.Tensor:
        """long [N] task indices; an unknown task raises an error listing the vocabulary."""
        try:
            ids = [self._index[t] for t in task_names]
        except KeyError as e:
            raise KeyError(
                f"success classifier: unknown task {e.args[0]!r}; it was trained on {self.config.task_names}. "
                f"Retrain with recipes/train_reward.py on episodes of this task."
            ) from None
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def forward(self, images: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits.

        Args:
            images: uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1].
            task_ids: long [N].

        Returns:
            float [N] logits.
        """
        x = images_to_float(images.to(self.device), self.config.image_size)  # [N, 3, s, s]
        feats = self.encoder(x * 2.0 - 1.0).flatten(1)  # [N, c*g*g]
        h = self.proj(feats)  # [N, D]
        gamma, beta = self.film(self.task_embed(task_ids)).chunk(2, dim=-1)  # [N, D] each
        h = self.head(h * (1.0 + gamma) + beta)
        return self.out(h)[:, 0] + self.task_bias(task_ids)[:, 0]  # [N]

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Platt-scaled logits: platt_scale · logit + platt_bias."""
        return self.config.platt_scale * logits + self.config.platt_bias

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Calibrated logits, float [N] on CPU, in eval mode and batches of `batch_size`.

        Args:
            images: uint8 [N, H, W, 3].
            task_names: N task names from the vocabulary.
        """
        if len(task_names) != images.shape[0]:
            raise ValueError(f"success classifier: {images.shape[0]} images but {len(task_names)} task names")
        was_training = self.training
        self.eval()
        ids = self.task_ids(task_names)
        out = [self(images[i : i + batch_size], ids[i : i + batch_size]).cpu() for i in range(0, len(ids), batch_size)]
        self.train(was_training)
        logits = torch.cat(out) if out else torch.zeros(0)
        return self.calibrate(logits)

    def predict_proba(self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Calibrated success probabilities, float [N]."""
        return torch.sigmoid(self.predict_logits(images, task_names, batch_size))


# ----------------------------------------------------------------------------------------------------------------
# Augmentation (imitate a World Expert's decoded frames)
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Frames, labels and hard negatives from an episode dataset
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FrameSet:
    """Labelled frames for the success classifier (M frames).

    Attributes:
        images: uint8 [M, H, W, 3].
        labels: bool [M] — the frame shows the task solved.
        task_names: M task names.
        episode: int64 [M] episode ids (splits are by episode).
        hard_negative: bool [M] — negative whose hand is near a success pose of its task.
        early_negative: bool [M] — frame from the early steps of a successful episode (same scene as its positives,
            object not yet moved); sampled with the hard negatives.
        boundary: bool [M] — negative within `boundary_margin` steps before the first success of its episode (nearly
            identical to the positives; the recipe leaves these out of training, never out of evaluation).
    """

    images: np.ndarray
    labels: np.ndarray
    task_names: list[str]
    episode: np.ndarray
    hard_negative: np.ndarray
    early_negative: np.ndarray | None = None
    boundary: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.early_negative is None:
            self.early_negative = np.zeros(len(self.labels), dtype=bool)
        if self.boundary is None:
            self.boundary = np.zeros(len(self.labels), dtype=bool)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> FrameSet:
        idx = np.asarray(idx)
        return FrameSet(
            images=self.images[idx],
            labels=self.labels[idx],
            task_names=[self.task_names[i] for i in idx],
            episode=self.episode[idx],
            hard_negative=self.hard_negative[idx],
            early_negative=self.early_negative[idx],
            boundary=self.boundary[idx],
        )

    @staticmethod
    def cat(items: Sequence[FrameSet]) -> FrameSet:
        return FrameSet(
            images=np.concatenate([f.images for f in items]),
            labels=np.concatenate([f.labels for f in items]),
            task_names=[t for f in items for t in f.task_names],
            episode=np.concatenate([f.episode for f in items]),
            hard_negative=np.concatenate([f.hard_negative for f in items]),
            early_negative=np.concatenate([f.early_negative for f in items]),
            boundary=np.concatenate([f.boundary for f in items]),
        )

    def summary(self) -> dict[str, int]:
        return {
            "frames": len(self),
            "positives": int(self.labels.sum()),
            "negatives": int((~self.labels).sum()),
            "hard_negatives": int(self.hard_negative.sum()),
            "early_negatives": int(self.early_negative.sum()),
            "boundary": int(self.boundary.sum()),
            "episodes": len(np.unique(self.episode)),
        }


REQUIRED_COLUMNS = ("image", "state", "success", "episode_success", "task_name", "episode_index", "step_index")


def frame_labels(success: np.ndarray, episode: np.ndarray, step: np.ndarray) -> np.ndarray:
    """bool [M]: frame t shows success when the action at t-1 of the same episode set `success`.

    Rows may come in any order; they are matched by (episode, step).
    """
    order = np.lexsort((step, episode))
    labels = np.zeros(len(success), dtype=bool)
    s_sorted, e_sorted = success[order], episode[order]
    prev_same = np.zeros(len(order), dtype=bool)
    prev_same[1:] = e_sorted[1:] == e_sorted[:-1]
    shifted = np.zeros(len(order), dtype=bool)
    shifted[1:] = s_sorted[:-1]
    labels[order] = shifted & prev_same
    return labels


def hard_negative_mask(
    labels: np.ndarray,
    hand_xyz: np.ndarray,
    task_names: Sequence[str],
    episode_success: np.ndarray,
    radius: float,
) -> np.ndarray:
    """bool [M]: frames of failed episodes whose hand is within `radius` of a success pose of the same task.

    Args:
        labels: bool [M] frame labels.
        hand_xyz: float [M, 3] hand position (the first three state entries).
        task_names: M task names.
        episode_success: bool [M] whether the frame's episode succeeded.
        radius: metres.
    """
    mask = np.zeros(len(labels), dtype=bool)
    tasks = np.asarray(task_names)
    for task in np.unique(tasks):
        in_task = tasks == task
        success_poses = hand_xyz[in_task & labels]  # [P, 3]
        candidates = np.where(in_task & ~labels & ~episode_success)[0]
        if len(success_poses) == 0 or len(candidates) == 0:
            continue
        d = torch.cdist(torch.from_numpy(hand_xyz[candidates]).float(), torch.from_numpy(success_poses).float())
        mask[candidates[(d.amin(dim=1) <= radius).numpy()]] = True
    return mask


def early_negative_mask(
    labels: np.ndarray, episode: np.ndarray, step: np.ndarray, early_fraction: float
) -> np.ndarray:
    """bool [M]: frames of successful episodes with step < early_fraction · (step of the first success frame)."""
    mask = np.zeros(len(labels), dtype=bool)
    if early_fraction <= 0:
        return mask
    for ep in np.unique(episode[labels]):
        in_ep = episode == ep
        first = step[in_ep & labels].min()
        mask |= in_ep & (step < early_fraction * first) & ~labels
    return mask


def boundary_mask(labels: np.ndarray, episode: np.ndarray, step: np.ndarray, margin: int) -> np.ndarray:
    """bool [M]: negatives within `margin` steps before the first success frame of their episode."""
    mask = np.zeros(len(labels), dtype=bool)
    if margin <= 0:
        return mask
    for ep in np.unique(episode[labels]):
        in_ep = episode == ep
        first = step[in_ep & labels].min()
        mask |= in_ep & (step >= first - margin) & (step < first) & ~labels
    return mask


def frames_from_dataset(
    dataset: Any, hard_negative_radius: float = 0.05, early_fraction: float = 0.3, boundary_margin: int = 2
) -> FrameSet:
    """Labelled frames from an episode dataset (a `datasets.Dataset`, a path saved with `save_to_disk`, or an
    `EpisodeDataset` with `.dataset`), with hard negatives (`hard_negative_radius`, metres) and early negatives (the
    first `early_fraction` of each successful episode before its success), and the `boundary_margin` frames right
    before each first success marked."""
    if isinstance(dataset, (str, Path)):
        from datasets import load_from_disk

        dataset = load_from_disk(str(dataset))
    dataset = getattr(dataset, "dataset", dataset)
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"episode dataset: missing column(s) {missing}; expected the schema of docs/internals.md "
            f"(has {dataset.column_names})"
        )
    cols = dataset.with_format("numpy")
    images = np.asarray(cols["image"], dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"episode dataset: expected images [M, H, W, 3] uint8, got {images.shape}")
    state = np.asarray(cols["state"], dtype=np.float32)
    success = np.asarray(cols["success"], dtype=bool)
    episode = np.asarray(cols["episode_index"], dtype=np.int64)
    step = np.asarray(cols["step_index"], dtype=np.int64)
    ep_success = np.asarray(cols["episode_success"], dtype=bool)
    task_names = [str(t) for t in dataset["task_name"]]
    labels = frame_labels(success, episode, step)
    hard = hard_negative_mask(labels, state[:, :3], task_names, ep_success, hard_negative_radius)
    early = early_negative_mask(labels, episode, step, early_fraction)
    boundary = boundary_mask(labels, episode, step, boundary_margin)
    return FrameSet(images, labels, task_names, episode, hard_negative=hard, early_negative=early, boundary=boundary)


def split_by_episode(frames: FrameSet, fractions: Sequence[float], seed: int = 0) -> list[FrameSet]:
    """Split frames into len(fractions)+1 parts by episode: the listed fractions, then the rest (first part).

    Episodes are shuffled within each (task, episode outcome) stratum so every part sees every task and both
    outcomes when there are enough episodes. Returns [rest, part_1, …].
    """
    rng = np.random.default_rng(seed)
    episodes = np.unique(frames.episode)
    ep_task = {}
    ep_ok = {}
    for i, e in enumerate(frames.episode):
        ep_task.setdefault(e, frames.task_names[i])
        ep_ok[e] = ep_ok.get(e, False) or bool(frames.labels[i])
    assign: dict[int, int] = {}
    strata: dict[tuple[str, bool], list[int]] = {}
    for e in episodes:
        strata.setdefault((ep_task[e], ep_ok[e]), []).append(int(e))
    for eps in strata.values():
        eps = list(rng.permutation(eps))
        start = 0
        for part, frac in enumerate(fractions, start=1):
            k = int(round(frac * len(eps)))
            if frac > 0 and k == 0 and len(eps) - start >= 2:
                k = 1
            for e in eps[start : start + k]:
                assign[e] = part
            start += k
        for e in eps[start:]:
            assign[e] = 0
    part_of = np.array([assign[int(e)] for e in frames.episode])
    return [frames.subset(np.where(part_of == p)[0]) for p in range(len(fractions) + 1)]


def sampling_weights(frames: FrameSet, hard_negative_fraction: float = 0.25) -> np.ndarray:
    """float [M] sampling weights: half the mass on positives, `hard_negative_fraction` on hard and early negatives,
    the rest on other negatives (renormalised when a group is absent)."""
    hard = (frames.hard_negative | frames.early_negative) & ~frames.labels
    groups = [frames.labels, hard, ~frames.labels & ~hard]
    mass = [0.5, hard_negative_fraction, 0.5 - hard_negative_fraction]
    w = np.zeros(len(frames), dtype=np.float64)
    for g, m in zip(groups, mass):
        if g.any() and m > 0:
            w[g] = m / g.sum()
    if w.sum() == 0:
        w[:] = 1.0
    return w / w.sum()


# ----------------------------------------------------------------------------------------------------------------
# Metrics and calibration
# ----------------------------------------------------------------------------------------------------------------


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half); NaN when one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_table(probs: Any, labels: Any, bins: int = 10) -> list[dict[str, float]]:
    """Per probability bin: count, mean predicted probability, observed success frequency.

    Returns:
        `bins` dicts with keys lo, hi, count, mean_prob, frac_positive (NaN for empty bins).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    table = []
    for b in range(bins):
        m = idx == b
        table.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": int(m.sum()),
                "mean_prob": float(p[m].mean()) if m.any() else float("nan"),
                "frac_positive": float(y[m].mean()) if m.any() else float("nan"),
            }
        )
    return table


def expected_calibration_error(probs: Any, labels: Any, bins: int = 10) -> float:
    """Σ_b (n_b / n) · |mean prob_b − frequency_b|."""
    table = reliability_table(probs, labels, bins)
    n = sum(r["count"] for r in table)
    if n == 0:
        return float("nan")
    return float(sum(r["count"] / n * abs(r["mean_prob"] - r["frac_positive"]) for r in table if r["count"]))


def fit_platt(logits: Any, labels: Any, max_iter: int = 200) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log-loss of sigmoid(a · logit + b) (Platt, 1999).

    Returns (1, 0) when one class is absent.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * z + params[1], y) + 1e-4 * params[0] ** 2
        loss.backward()
        return loss

    opt.step(closure)
    a, b = params.detach().tolist()
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        return 1.0, 0.0
    return float(a), float(b)


def choose_threshold(probs: Any, labels: Any, rule: str = "f1") -> float:
    """Decision threshold on probabilities maximising F1 (rule "f1") or Youden's J = TPR − FPR (rule "youden")."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if rule not in ("f1", "youden"):
        raise ValueError(f"threshold rule: expected 'f1' or 'youden', got {rule!r}")
    if y.all() or (~y).all():
        return 0.5
    best, best_t = -1.0, 0.5
    for t in np.unique(p):
        pred = p >= t
        tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
        fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
        if rule == "f1":
            score = 2 * tp / max(2 * tp + fp + fn, 1)
        else:
            score = tp / max(tp + fn, 1) - fp / max(fp + tn, 1)
        if score > best:
            best, best_t = score, float(t)
    return best_t


def classification_metrics(probs: Any, labels: Any, threshold: float, prefix: str = "") -> dict[str, Any]:
    """AUROC, ECE, Brier, accuracy, precision, recall at `threshold`, plus counts; keys prefixed by `prefix`."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pred = p >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    out = {
        "auroc": auroc(p, y),
        "ece": expected_calibration_error(p, y),
        "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"),
        "accuracy": float((pred == y).mean()) if len(p) else float("nan"),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "positives": int(y.sum()),
        "count": len(p),
    }
    return {f"{prefix}{k}": v for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# The reward
# ----------------------------------------------------------------------------------------------------------------


def load_success_classifier(path: str | Path, device: str | torch.device | None = None) -> SuccessClassifier:
    """Load a classifier saved with `save_pretrained` (a train_reward output_dir works: its `final/` is used, as for the policy)."""
    p = Path(path)
    if (p / "final" / "config.json").is_file():
        p = p / "final"
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"reward model {str(path)!r}: no config.json there (nor in final/); train one with "
            f"`python recipes/train_reward.py --dataset_path ... --output_dir ...`"
        )
    model = SuccessClassifier.from_pretrained(str(p))
    if device is not None:
        model = model.to(device)
    return model.eval()


class SubgoalSuccessReward:
    """Success classifier as a reward on predicted subgoal images.

    Args:
        model: a trained `SuccessClassifier` (calibrated).
        mode: per-row value — "final" (probability after the last chunk run), "max" (largest over the chunks run)
            or "success" (1.0 when any chunk run reaches the calibrated threshold, else 0.0).
        batch_size: frames per classifier forward.
    """

    __name__ = "subgoal_success"

    def __init__(self, model: SuccessClassifier, mode: str = "final", batch_size: int = 512) -> None:
        if mode not in ("final", "max", "success"):
            raise ValueError(f"subgoal_success: mode must be 'final', 'max' or 'success', got {mode!r}")
        self.model = model.eval()
        self.mode = mode
        self.batch_size = batch_size

    @property
    def threshold(self) -> float:
        return self.model.config.threshold

    def chunk_probs(self, subgoal_images: torch.Tensor, task_names: Sequence[str]) -> torch.Tensor:
        """Per-chunk success probability.

        Args:
            subgoal_images: uint8 [N, T, H, W, 3].
            task_names: N task names.

        Returns:
            float [N, T] calibrated probabilities.
        """
        n, t = subgoal_images.shape[:2]
        flat = subgoal_images.reshape(n * t, *subgoal_images.shape[2:])  # [N*T, H, W, 3]
        tasks = [name for name in task_names for _ in range(t)]
        return self.model.predict_proba(flat, tasks, self.batch_size).reshape(n, t)  # [N, T]

    def trajectory_success(
        self, subgoal_images: torch.Tensor, task_names: Sequence[str], alive: torch.Tensor | None = None
    ) -> torch.Tensor:
        """bool [N]: some chunk that ran reached the calibrated threshold."""
        probs = self.chunk_probs(subgoal_images, task_names)
        if alive is not None:
            probs = probs * alive.bool().cpu()
        return (probs >= self.threshold).any(dim=1)

    def __call__(
        self,
        *,
        subgoal_images: torch.Tensor,
        task_names: Sequence[str],
        alive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Args: subgoal_images uint8 [N, T, H, W, 3]; task_names N; alive bool [N, T]. Returns N floats in [0, 1]."""
        n, t = subgoal_images.shape[:2]
        alive = torch.ones(n, t, dtype=torch.bool) if alive is None else torch.as_tensor(alive).bool().cpu()
        if self.mode == "final":  # only the last frame each row ran: T times cheaper than every chunk
            last = last_alive_index(alive).to(subgoal_images.device)
            final = subgoal_images[torch.arange(n, device=subgoal_images.device), last]  # [N, H, W, 3]
            return self.model.predict_proba(final, list(task_names), self.batch_size).tolist()
        probs = self.chunk_probs(subgoal_images, task_names)  # [N, T]
        ran = torch.where(alive, probs, torch.zeros_like(probs))
        if self.mode == "max":
            return ran.amax(dim=1).tolist()
        return (ran >= self.threshold).any(dim=1).float().tolist()


@reward_factory
def build_subgoal_success_reward(
    reward_model_path: str,
    success_reward_mode: str = "final",
    device: str | torch.device | None = None,
    **unused: Any,
) -> SubgoalSuccessReward:
    """The `subgoal_success` built-in: context `reward_model_path` (a train_reward output_dir or a saved model)."""
    return SubgoalSuccessReward(load_success_classifier(reward_model_path, device), mode=success_reward_mode)


# ----------------------------------------------------------------------------------------------------------------
# Training, calibration and World-Expert-predicted frames (used by recipes/train_reward.py and benchmarks)
# ----------------------------------------------------------------------------------------------------------------


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
) -> dict[str, float]:
    """Train `model` with weighted sampling (positives / hard negatives / other negatives) and augmentation.

    Args:
        model: the classifier (trained in place).
        train: labelled training frames.
        val: frames for periodic AUROC (optional).
        log_fn: called as log_fn(step, metrics_dict) every `eval_steps` and at the end.

    Returns:
        The last logged metrics.
    """
    if not train.labels.any() or train.labels.all():
        raise ValueError(
            f"train_reward: the training split needs both successful and failed frames, got {train.summary()}; "
            f"collect episodes with failures (noise modes) and successes"
        )
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
        logits = model(x, task_ids[idx])
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx].to(logits.device))
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
            model.train()
            if log_fn is not None:
                log_fn(step, metrics)
    model.eval()
    return metrics


def _raw_logits(model: SuccessClassifier, frames: FrameSet, batch_size: int = 256) -> torch.Tensor:
    """Uncalibrated logits float [M] of `frames`."""
    model.eval()
    ids = model.task_ids(frames.task_names)
    images = torch.from_numpy(frames.images)
    with torch.no_grad():
        out = [
            model(images[i : i + batch_size], ids[i : i + batch_size]).cpu() for i in range(0, len(ids), batch_size)
        ]
    return torch.cat(out) if out else torch.zeros(0)


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
    return out


def format_reliability(table: list[dict[str, float]]) -> str:
    """A markdown reliability table."""
    lines = ["| bin | count | mean predicted | observed frequency |", "|---|---|---|---|"]
    for r in table:
        if r["count"]:
            lines.append(
                f"| {r['lo']:.1f}–{r['hi']:.1f} | {r['count']} | {r['mean_prob']:.3f} | {r['frac_positive']:.3f} |"
            )
        else:
            lines.append(f"| {r['lo']:.1f}–{r['hi']:.1f} | 0 | – | – |")
    return "\n".join(lines)


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
    from wlarl.types import Observation

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
    windows = []  # (row at t, rows t..t+H-1, row at t+H)
    order = np.lexsort((step, real.episode))
    ep_sorted = real.episode[order]
    bounds = np.flatnonzero(np.r_[True, ep_sorted[1:] != ep_sorted[:-1], True])
    for s, e in zip(bounds[:-1], bounds[1:]):
        rows = order[s:e]
        if keep_eps is not None and int(real.episode[rows[0]]) not in keep_eps:
            continue
        last = len(rows) - 1
        for i in range(0, max(last, 1), stride):
            act_rows = [rows[min(i + k, max(last - 1, 0))] for k in range(horizon)]
            windows.append((rows[i], act_rows, rows[min(i + horizon, last)]))
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
        r0 = np.array([w[0] for w in chunk])
        obs = Observation(
            images=torch.from_numpy(real.images[r0]),
            states=torch.from_numpy(state[r0]),
            instructions=[instructions[i] for i in r0],
            task_names=[real.task_names[i] for i in r0],
        )
        acts = torch.from_numpy(np.stack([action[w[1]] for w in chunk]))  # [n, H, A]
        with torch.no_grad():
            pred = policy.imagine(obs, acts, decode=True)
        if pred.images is None:
            raise ValueError("predicted_frames: policy.imagine(..., decode=True) returned no images")
        images_out.append(pred.images.cpu().numpy().astype(np.uint8))
    target = np.array([w[2] for w in windows])
    return FrameSet(
        images=np.concatenate(images_out),
        labels=real.labels[target],
        task_names=[real.task_names[i] for i in target],
        episode=real.episode[target],
        hard_negative=real.hard_negative[target],
        early_negative=real.early_negative[target],
        boundary=real.boundary[target],
    )
