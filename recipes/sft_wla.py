"""Supervised training of a WLA policy on demonstration episodes.

    python recipes/sft_wla.py --config recipes/configs/debug.yaml --dataset_path D --output_dir O

Stages: build the word-level tokenizer from the dataset's instructions and subtasks (plus the simulator's
instruction templates when `rollout` is installed); set state/action normalisation from the dataset; pre-train the
image tokenizer (reconstruction); then train everything jointly: action loss (Gaussian: MSE of the mean + NLL of the
log-std; flow: flow matching), World-Expert losses (latent + state + success, teacher-forced on the recorded chunks
of clean and noisy episodes; with `--world_open_loop_chunks K` > 1 rolled out over K chunks with the World Expert's
own predictions fed back, as in imagination), subtask cross-entropy and reconstruction. Writes `metrics.jsonl`, `config.json`,
`O/final` (save_pretrained: safetensors + tokenizer + processor) and, when the simulator is importable, the real-sim
success of the trained policy on its tasks (`eval/...`, also in `O/eval_results.json`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wlarl.cli import parse_config, save_config
from wlarl.data import load_episodes
from wlarl.models.wla import WLAConfig, WLAPolicy, WLAProcessor, tiny_llama_config
from wlarl.utils.cache import cache_root

logger = logging.getLogger("sft_wla")


@dataclass
class SFTWLAConfig:
    """Config of `recipes/sft_wla.py` (every field can be overridden on the command line)."""

    dataset_path: str | None = field(default=None, metadata={"help": "Episode dataset (wlarl.data.write_episodes)."})
    output_dir: str = field(default="runs/sft_wla", metadata={"help": "Checkpoints, metrics.jsonl, config.json."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and batch sampling."})
    # --- model
    action_head: str = field(default="gaussian", metadata={"help": "Action Expert head: gaussian or flow."})
    chunk_size: int = field(default=8, metadata={"help": "H, actions per chunk."})
    latent_size: int = field(default=8, metadata={"help": "h = w of the image-latent grid."})
    latent_channels: int = field(default=16, metadata={"help": "C of the image-latent grid."})
    tokenizer_channels: list[int] = field(
        default_factory=lambda: [16, 32, 64, 64],
        metadata={"help": "Image-tokenizer conv widths per resolution (log2(image/latent) + 1 entries)."},
    )
    latent_patch: int = field(default=2, metadata={"help": "p: p x p latent cells per backbone/world token."})
    recon_fraction: float = field(default=0.25, metadata={"help": "Share of rows reconstructed in the joint stage."})
    latent_state_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the latent state probe (full state read from image latents, its gradient reaching the "
            "encoder) in both stages, so latents keep small objects and goal markers; needs world_full_state; 0 off."
        },
    )
    meta_state_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the backbone state probe (full state read from the meta-query states both experts "
            "read, its gradient reaching the backbone), so the backbone carries goal and object positions; needs "
            "world_full_state; 0 off."
        },
    )
    meta_state_frames: int = field(
        default=0,
        metadata={
            "help": "Simulator frames per task on which the backbone state probe is also trained, one per seeded "
            "layout (rollout.collect.state_frames), a batch of them beside every joint step: with a new goal in "
            "every frame the backbone must read it from the frame instead of recalling its episode; needs "
            "meta_state_weight > 0 and the simulator; 0 off."
        },
    )
    meta_state_frame_steps: int = field(
        default=0,
        metadata={
            "help": "Up to this many random actions after each reset before the frame is taken (0: reset frames)."
        },
    )
    meta_state_frame_seed: int = field(
        default=100_000,
        metadata={
            "help": "First reset seed of the state-probe frames (away from demonstration and evaluation seeds)."
        },
    )
    meta_state_frame_norm: str = field(
        default="task",
        metadata={
            "help": "Scale of the probe's error on the frames: 'task' weighs each dimension by its inverse variance "
            "within the frame's task (dimensions that do not vary within the task weigh 0), so that a goal that "
            "varies little across the dataset's tasks still counts; 'dataset' is the plain MSE in the dataset's "
            "normalisation (as on the demonstrations)."
        },
    )
    meta_state_frame_workers: int = field(
        default=2, metadata={"help": "Processes rendering the state-probe frames (one task per process at a time)."}
    )
    meta_state_frame_cache: bool = field(
        default=True,
        metadata={
            "help": "Keep the rendered state-probe frames under $WLARL_CACHE/state_frames (default ~/.cache/wlarl), "
            "keyed by task, seeds, frame options and the code that renders them, and reuse them: another SFT with the "
            "same frames skips their rendering (3-6 min for 8 tasks × 2,000 frames). false: render every time."
        },
    )
    meta_state_frame_noise: bool = field(
        default=True,
        metadata={
            "help": "Noise the state-probe frames' latents as SFT noises the demonstrations' (latent_noise_std); "
            "false: the probe reads clean latents, as the policy does when it acts."
        },
    )
    meta_state_frame_batch: int = field(
        default=0,
        metadata={
            "help": "State-probe frames per step, in the probe stage and beside every joint step (0: batch_size); "
            "the frames of all tasks are drawn uniformly, so each task gets about this / tasks per step."
        },
    )
    meta_state_pre_steps: int = field(
        default=0,
        metadata={
            "help": "Steps of a probe stage between the tokenizer and joint stages: the backbone and its state "
            "probe train on the state-probe frames alone (meta_state_frame_batch a step), so the backbone learns to read "
            "goals and objects before the joint stage asks it for actions; needs meta_state_frames; 0 off."
        },
    )
    meta_state_frame_expert_steps: int = field(
        default=0,
        metadata={
            "help": "Up to this many clean scripted-expert steps after the random ones before each state-probe frame "
            "is taken, so that frames also lie along the expert's way to the goal (0: none)."
        },
    )
    meta_state_frame_target_steps: int = field(
        default=0,
        metadata={
            "help": "Up to this many steps towards a random workspace point after the random ones (before the "
            "expert's), so that the hand's position in a frame tells nothing of the goal (0: none)."
        },
    )
    meta_state_frame_action_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the Action Expert's loss on the state-probe frames, each labelled with the clean "
            "scripted expert's next chunk from its state and its subtask by rollout.experts' rules (one expert chunk "
            "per fresh layout: many goals at the price of one chunk each); 0 off (the frames then keep the subtask "
            "their task's demonstrations start with)."
        },
    )
    meta_state_frame_dims: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Full-state dimensions the probe's error on the frames counts (e.g. [4, 5, 6, 36, 37, 38]: the "
            "object's and the goal's positions); the others weigh 0, so that what one frame cannot tell (a knocked "
            "object's orientation, the previous frame's state) does not take the probe's capacity (empty: all)."
        },
    )
    meta_state_frame_task_weights: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Draw weights of the state-probe frames per task as TASK=W (e.g. [reach-v3=6, push-v3=6]); "
            "unlisted tasks weigh 1, and a task's share of every frame batch is its weight over the sum (empty: "
            "uniform over frames)."
        },
    )
    hidden_size: int = field(default=128, metadata={"help": "Backbone (tiny Llama) width."})
    num_layers: int = field(default=3, metadata={"help": "Backbone layers."})
    num_heads: int = field(default=4, metadata={"help": "Backbone attention heads."})
    num_meta_queries: int = field(default=4, metadata={"help": "M meta-queries feeding both experts."})
    action_hidden: int = field(default=256, metadata={"help": "Action Expert MLP width."})
    world_hidden: int = field(default=128, metadata={"help": "World Expert transformer width."})
    world_layers: int = field(default=2, metadata={"help": "World Expert transformer layers."})
    world_full_state: bool = field(
        default=True,
        metadata={
            "help": "The World Expert also models the dataset's full simulator state (object and goal positions), "
            "so that imagined rows carry `full_states` for state-grounded rewards."
        },
    )
    flow_steps: int = field(default=5, metadata={"help": "K denoising steps of the flow head."})
    world_open_loop_chunks: int = field(
        default=1,
        metadata={
            "help": "Chunks per window over which the World Expert is trained open loop, its own predictions fed "
            "back (WLAPolicy.open_loop_world_losses); 1 = one chunk ahead from real inputs. Action, subtask and "
            "reconstruction losses read the first chunk either way."
        },
    )
    latent_noise_std: float = field(
        default=0.1, metadata={"help": "Latent noise in training (closed-loop robustness)."}
    )
    max_subtask_tokens: int = field(default=12, metadata={"help": "Longest generated subtask, [EOS] included."})
    # --- training
    tokenizer_steps: int = field(default=400, metadata={"help": "Image-tokenizer pre-training steps."})
    max_steps: int = field(default=1500, metadata={"help": "Joint training steps."})
    batch_size: int = field(default=32, metadata={"help": "Windows per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate of the joint stage."})
    tokenizer_learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the pre-stage."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(
        default=50, metadata={"help": "Linear warm-up steps, then cosine decay to a tenth of the peak learning rate."}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clip (0 = off)."})
    logging_steps: int = field(default=20, metadata={"help": "Write metrics.jsonl every this many steps."})
    save_steps: int = field(
        default=0, metadata={"help": "Also checkpoint every this many joint steps (0 = final only)."}
    )
    bc_noise_modes: list[str] = field(
        default_factory=lambda: ["clean", "gaussian"],
        metadata={
            "help": "Noise modes whose actions are imitated (not random or wrong-target segments); the World Expert trains on every episode."
        },
    )
    bc_successful_only: bool = field(default=True, metadata={"help": "Imitate actions of successful episodes only."})
    torch_threads: int = field(
        default=0,
        metadata={"help": "torch.set_num_threads (0 = torch's default, i.e. OMP_NUM_THREADS). Use 1 on a shared CPU: "
                  "2-thread OpenMP spinning against other jobs made steps ~10x more expensive."},
    )  # fmt: skip
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})
    # --- final real-simulator evaluation
    eval_episodes_per_task: int = field(
        default=10, metadata={"help": "Real-sim episodes per task after training (0 = skip)."}
    )
    eval_tts_candidates: int = field(
        default=0, metadata={"help": "Also evaluate with test-time scaling over K sampled chunks (0 = skip)."}
    )
    eval_seed: int = field(default=10_000, metadata={"help": "Base reset seed of the evaluation episodes."})
    eval_num_workers: int = field(default=1, metadata={"help": "Env worker processes of the evaluation."})
    eval_max_episode_steps: int = field(default=150, metadata={"help": "Step limit of an evaluation episode."})
    eval_timeout_s: float = field(default=1800.0, metadata={"help": "Wall-clock budget of each evaluation."})

    def __post_init__(self) -> None:
        if self.action_head not in ("gaussian", "flow"):
            raise ValueError(f"action_head={self.action_head!r}: use 'gaussian' or 'flow'")
        for name in ("chunk_size", "batch_size", "logging_steps", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.world_open_loop_chunks < 1:
            raise ValueError(
                f"world_open_loop_chunks={self.world_open_loop_chunks}: expected >= 1 (1 = one chunk ahead, as before)"
            )
        if self.max_steps < 0 or self.tokenizer_steps < 0:
            raise ValueError("max_steps and tokenizer_steps must be >= 0")
        if self.meta_state_frame_norm not in ("task", "dataset"):
            raise ValueError(f"meta_state_frame_norm={self.meta_state_frame_norm!r}: use 'task' or 'dataset'")
        if self.meta_state_frame_workers < 1:
            raise ValueError(f"meta_state_frame_workers={self.meta_state_frame_workers}: expected ≥ 1")
        if self.meta_state_frames < 0 or self.meta_state_frame_steps < 0:
            raise ValueError(
                f"meta_state_frames={self.meta_state_frames}, meta_state_frame_steps={self.meta_state_frame_steps}: "
                "expected ≥ 0"
            )
        if self.meta_state_frame_batch < 0:
            raise ValueError(f"meta_state_frame_batch={self.meta_state_frame_batch}: expected ≥ 0 (0: batch_size)")
        if min(self.meta_state_frame_expert_steps, self.meta_state_frame_target_steps) < 0 or (
            self.meta_state_frame_action_weight < 0
        ):
            raise ValueError(
                f"meta_state_frame_expert_steps={self.meta_state_frame_expert_steps}, meta_state_frame_target_steps="
                f"{self.meta_state_frame_target_steps}, meta_state_frame_action_weight="
                f"{self.meta_state_frame_action_weight}: expected ≥ 0 (0: off)"
            )
        parse_task_weights(self.meta_state_frame_task_weights)  # a malformed entry fails here, not after rendering
        if self.meta_state_frame_action_weight > 0 and self.meta_state_frames <= 0:
            raise ValueError(
                f"meta_state_frame_action_weight={self.meta_state_frame_action_weight} trains the Action Expert on the "
                f"state-probe frames: it needs meta_state_frames > 0 (got {self.meta_state_frames})"
            )
        if self.meta_state_pre_steps < 0:
            raise ValueError(f"meta_state_pre_steps={self.meta_state_pre_steps}: expected ≥ 0")
        if self.meta_state_pre_steps > 0 and self.meta_state_frames <= 0:
            raise ValueError(
                f"meta_state_pre_steps={self.meta_state_pre_steps} trains the state probe on simulator frames: it "
                f"needs meta_state_frames > 0 (got {self.meta_state_frames})"
            )
        if self.meta_state_frames > 0 and (self.meta_state_weight <= 0 or not self.world_full_state):
            raise ValueError(
                f"meta_state_frames={self.meta_state_frames} trains the backbone state probe: it needs "
                f"meta_state_weight > 0 (got {self.meta_state_weight}) and world_full_state true "
                f"(got {self.world_full_state})"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")


class WindowBatches:
    """In-memory SFT windows with the semantics of `wlarl.data.SFTWindows` (stride 1), sampled a batch at a time.

    Columns are read once into numpy, so a batch is a few fancy-indexing ops instead of N Arrow slices.
    Batches have the keys of `wlarl.data.collate_windows` plus `action_weight` [N] (1 where the actions are
    imitated, see `bc_noise_modes` / `bc_successful_only`); with `chunks` K > 1, those of K-chunk windows
    (`SFTWindows(..., chunks=K)`).
    """

    def __init__(
        self, ep_ds, horizon: int, bc_noise_modes: list[str], bc_successful_only: bool, chunks: int = 1
    ) -> None:
        self.chunks = int(chunks)
        data = ep_ds.dataset.with_format("numpy")
        self.images = np.asarray(data["image"], dtype=np.uint8)  # [R, H_img, W, 3]
        self.states = np.asarray(data["state"], dtype=np.float32)  # [R, S]
        self.full_states = np.asarray(data["full_state"], dtype=np.float32)  # [R, F]
        self.actions = np.asarray(data["action"], dtype=np.float32)  # [R, A]
        self.success = np.asarray(data["success"], dtype=bool)
        self.subtask = list(ep_ds.dataset["subtask"])
        self.instruction = list(ep_ds.dataset["instruction"])
        self.task_name = list(ep_ds.dataset["task_name"])
        noise_mode = np.asarray(ep_ds.dataset["noise_mode"])
        episode_success = np.asarray(data["episode_success"], dtype=bool)
        self.horizon = horizon
        rows, last = [], []
        for s, e in ep_ds.episode_ranges:
            rows.append(np.arange(s, e - 1))  # window starts: never the is_last row
            last.append(np.full(e - 1 - s, e - 1))
        self.rows = np.concatenate(rows).astype(np.int64)  # [W]
        self.last = np.concatenate(last).astype(np.int64)  # [W] final-observation row of the episode
        weight = np.isin(noise_mode[self.rows], list(bc_noise_modes))
        if bc_successful_only:
            weight &= episode_success[self.rows]
        self.action_weight = weight.astype(np.float32)  # [W]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray, chunks: int | None = None) -> dict[str, Any]:
        """Windows `idx` [N] -> collated batch of `chunks` K-chunk windows (default: the windows' K)."""
        if (chunks or self.chunks) > 1:
            return self._chunk_batch(idx, chunks or self.chunks)
        r, last = self.rows[idx], self.last[idx]  # [N]
        h = self.horizon
        steps = r[:, None] + np.arange(h)[None, :]  # [N, H]
        valid = steps < last[:, None]  # action rows before the final observation are real actions
        clamped = np.minimum(steps, last[:, None] - 1)  # padding repeats the episode's last action
        nxt = np.minimum(r + h, last)  # [N]
        return {
            "image": torch.from_numpy(self.images[r]),
            "state": torch.from_numpy(self.states[r]),
            "actions": torch.from_numpy(self.actions[clamped]),  # [N, H, A]
            "action_mask": torch.from_numpy(valid),
            "next_image": torch.from_numpy(self.images[nxt]),
            "next_state": torch.from_numpy(self.states[nxt]),
            "full_state": torch.from_numpy(self.full_states[r]),
            "next_full_state": torch.from_numpy(self.full_states[nxt]),
            "next_success": torch.from_numpy(self.success[nxt - 1]),
            "subtask": [self.subtask[i] for i in r],
            "instruction": [self.instruction[i] for i in r],
            "task_name": [self.task_name[i] for i in r],
            "action_weight": torch.from_numpy(self.action_weight[idx]),
        }

    def _chunk_batch(self, idx: np.ndarray, chunks: int) -> dict[str, Any]:
        """K-chunk windows `idx` [N] (`wlarl.data.chunk_window_rows`): chunk k starts at row t + kH."""
        r, last = self.rows[idx], self.last[idx][:, None]  # [N], [N, 1]
        h = self.horizon
        u = r[:, None] + h * np.arange(chunks)[None]  # [N, K] chunk start rows
        steps = u[..., None] + np.arange(h)  # [N, K, H]
        valid = steps < last[..., None]  # action rows before the final observation are real actions
        clamped = np.minimum(steps, last[..., None] - 1)  # padding repeats the episode's last action
        nxt = np.minimum(u + h, last)  # [N, K] targets, clamped to the final observation
        start = np.minimum(u, last)  # [N, K]
        return {
            "image": torch.from_numpy(self.images[r]),
            "state": torch.from_numpy(self.states[r]),
            "actions": torch.from_numpy(self.actions[clamped]),  # [N, K, H, A]
            "action_mask": torch.from_numpy(valid),  # [N, K, H]
            "chunk_mask": torch.from_numpy(u < last),  # [N, K] the chunk has a real action
            "next_image": torch.from_numpy(self.images[nxt]),  # [N, K, H_img, W, 3]
            "next_state": torch.from_numpy(self.states[nxt]),  # [N, K, S]
            "full_state": torch.from_numpy(self.full_states[r]),
            "next_full_state": torch.from_numpy(self.full_states[nxt]),  # [N, K, F]
            "next_success": torch.from_numpy(self.success[nxt - 1]),  # [N, K]
            "subtask": [self.subtask[i] for i in r],
            "chunk_subtasks": [[self.subtask[j] for j in row] for row in start],
            "instruction": [self.instruction[i] for i in r],
            "task_name": [self.task_name[i] for i in r],
            "action_weight": torch.from_numpy(self.action_weight[idx]),
        }


def parse_task_weights(items: list[str], tasks: list[str] | None = None) -> dict[str, float]:
    """`meta_state_frame_task_weights` entries TASK=W as {task: W}; with `tasks`, every task listed must be one of them."""
    weights: dict[str, float] = {}
    for item in items:
        task, sep, w = str(item).partition("=")
        task = task.strip()
        try:
            value = float(w) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not task or not value >= 0 or not np.isfinite(value):
            raise ValueError(
                f"meta_state_frame_task_weights entry {item!r}: expected TASK=W with W ≥ 0, e.g. reach-v3=6"
            )
        if task in weights:
            raise ValueError(f"meta_state_frame_task_weights: {task!r} is given twice ({items}); give each task once")
        if tasks is not None and task not in tasks:
            raise ValueError(
                f"meta_state_frame_task_weights entry {item!r}: {task!r} is not among the frames' tasks {tasks}"
            )
        weights[task] = value
    return weights


class StateFrames:
    """Frames of fresh seeded layouts with their full states, for the backbone state probe (`meta_state_frames`), and
    with the expert's chunk from each frame for the Action Expert (`meta_state_frame_action_weight`).

    With `subtasks` each task's frames get the subtask its demonstrations start with (the most common one at their
    first rows); without it, every frame's own label (`state_frames`' "subtask"). The backbone reads it teacher-forced
    as in SFT. Batches have the keys of `WLAPolicy.frame_losses` ("actions" when the frames carry an "action").
    """

    def __init__(self, frames: dict[str, dict[str, Any]], subtasks: dict[str, str] | None = None) -> None:
        tasks = list(frames)
        missing = sorted(set(frames) - set(subtasks)) if subtasks is not None else []
        if missing:
            raise ValueError(f"StateFrames: no subtask for tasks {missing} (give one per task of `frames`)")
        unlabelled = [t for t in tasks if subtasks is None and "subtask" not in frames[t]]
        if unlabelled:
            raise ValueError(f"StateFrames: tasks {unlabelled} have no per-frame subtask; give `subtasks` per task")
        with_actions = [t for t in tasks if "action" in frames[t]]
        if with_actions and len(with_actions) != len(tasks):
            raise ValueError(
                f"StateFrames: only tasks {with_actions} of {tasks} carry expert chunks; label all frames or none"
            )
        self.images = np.concatenate([frames[t]["image"] for t in tasks])
        self.states = np.concatenate([frames[t]["state"] for t in tasks]).astype(np.float32)
        self.full_states = np.concatenate([frames[t]["full_state"] for t in tasks]).astype(np.float32)
        self.actions = (
            np.concatenate([frames[t]["action"] for t in tasks]).astype(np.float32) if with_actions else None
        )
        self.instruction = [s for t in tasks for s in frames[t]["instruction"]]
        if subtasks is None:
            self.subtask = [s for t in tasks for s in frames[t]["subtask"]]
        else:
            self.subtask = [subtasks[t] for t in tasks for _ in range(len(frames[t]["image"]))]
        self.task_rows = {}  # task -> its rows
        start = 0
        for t in tasks:
            self.task_rows[t] = np.arange(start, start + len(frames[t]["image"]))
            start += len(frames[t]["image"])
        self.weights: np.ndarray | None = None  # [N, F] per-row error weights (`weigh_by_task`)
        self.row_p: np.ndarray | None = None  # [N] draw probabilities (`weigh_draws`); None: uniform

    def keep_dims(self, dims: list[int]) -> None:
        """Count only the full-state dimensions `dims` in the probe's error (the per-row weights of the others are 0;
        on top of `weigh_by_task`'s weights where they are set)."""
        size = self.full_states.shape[1]
        bad = [d for d in dims if not 0 <= int(d) < size]
        if bad or not dims:
            raise ValueError(
                f"meta_state_frame_dims {list(dims)}: expected indices in 0 … {size - 1} (the full state)"
            )
        mask = np.zeros(size, np.float32)
        mask[list(map(int, dims))] = 1.0
        self.weights = (np.ones_like(self.full_states) if self.weights is None else self.weights) * mask

    def weigh_draws(self, task_weights: dict[str, float]) -> dict[str, float]:
        """Draw each task's frames with its share `task_weights.get(task, 1)` / sum of every task's weight (uniform
        within the task); returns the shares."""
        unknown = sorted(set(task_weights) - set(self.task_rows))
        if unknown:
            raise ValueError(
                f"StateFrames.weigh_draws: tasks {unknown} have no frames (tasks: {list(self.task_rows)})"
            )
        w = {t: float(task_weights.get(t, 1.0)) for t in self.task_rows}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"StateFrames.weigh_draws: the task weights {w} sum to 0; give some task a weight > 0")
        self.row_p = np.zeros(len(self))
        for t, rows in self.task_rows.items():
            self.row_p[rows] = w[t] / total / len(rows)
        return {t: w[t] / total for t in self.task_rows}

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n row indices: uniform over frames, or by the task shares of `weigh_draws`."""
        if self.row_p is None:
            return rng.integers(0, len(self), n)
        return rng.choice(len(self), size=n, p=self.row_p)

    def weigh_by_task(self, mean: np.ndarray, std: np.ndarray, min_var: float = 1e-4) -> None:
        """Weigh every frame's probe error by the inverse variance of each dimension within its task, in the
        normalisation (`mean`, `std`) the probe predicts in; dimensions whose variance there is below `min_var`
        (constant within the task) weigh 0."""
        norm = (self.full_states - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        self.weights = np.zeros_like(norm)
        for rows in self.task_rows.values():
            var = norm[rows].var(0)
            self.weights[rows] = np.where(var >= min_var, 1.0 / np.maximum(var, min_var), 0.0)

    @classmethod
    def collect(cls, ep_ds, windows: WindowBatches, cfg: SFTWLAConfig, image_size: int) -> StateFrames:
        """`cfg.meta_state_frames` frames per task of the dataset, with its camera and image size."""
        from collections import Counter
        from functools import partial

        from rollout.collect import cached_state_frames

        starts = [s for s, _ in ep_ds.episode_ranges]
        tasks = list(ep_ds.meta.get("tasks") or sorted(set(windows.task_name)))
        subtasks = {}
        for task in tasks:
            first = Counter(windows.subtask[s] for s in starts if windows.task_name[s] == task)
            if not first:
                raise ValueError(f"meta_state_frames: task {task!r} has no episode in {cfg.dataset_path}")
            subtasks[task] = first.most_common(1)[0][0]
        seeds = range(cfg.meta_state_frame_seed, cfg.meta_state_frame_seed + cfg.meta_state_frames)
        camera = ep_ds.meta.get("camera", "corner")
        labelled = cfg.meta_state_frame_action_weight > 0
        cache_dir = cache_root() / "state_frames" if cfg.meta_state_frame_cache else None
        render = partial(cached_state_frames, seeds=seeds, cache_dir=cache_dir, image_size=image_size, camera=camera,
                         random_steps=cfg.meta_state_frame_steps, expert_steps=cfg.meta_state_frame_expert_steps,
                         target_steps=cfg.meta_state_frame_target_steps,
                         action_chunk=cfg.chunk_size if labelled else 0)  # fmt: skip
        workers = min(cfg.meta_state_frame_workers, len(tasks))
        t0 = time.perf_counter()
        if workers > 1:
            import concurrent.futures as cf
            import multiprocessing as mp

            from tqdm.auto import tqdm

            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                jobs = [pool.submit(render, t, progress=False) for t in tasks]
                bar = tqdm(cf.as_completed(jobs), total=len(jobs), desc="state-probe frames", unit="task",
                           disable=not cfg.progress)  # fmt: skip
                for _ in bar:
                    pass
                frames = {t: job.result() for t, job in zip(tasks, jobs)}
        else:
            frames = {t: render(t, progress=cfg.progress) for t in tasks}
        logger.info("state-probe frames of %d tasks ready in %.0f s (cache: %s)", len(tasks), time.perf_counter() - t0,
                    cache_dir or "off")  # fmt: skip
        out = cls(frames, None if labelled else subtasks)
        for name, ours, theirs in (("image", out.images, windows.images), ("state", out.states, windows.states),
                                   ("full_state", out.full_states, windows.full_states)):  # fmt: skip
            if ours.shape[1:] != theirs.shape[1:]:
                raise ValueError(
                    f"meta_state_frames: the simulator's {name} has shape {list(ours.shape[1:])}, the dataset's "
                    f"{cfg.dataset_path} {list(theirs.shape[1:])}: the probe frames must come from the simulator, "
                    "camera and image size the dataset was collected with"
                )
        return out

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: np.ndarray) -> dict[str, Any]:
        return (
            {
                "image": torch.from_numpy(self.images[idx]),
                "state": torch.from_numpy(self.states[idx]),
                "full_state": torch.from_numpy(self.full_states[idx]),
                "instruction": [self.instruction[i] for i in idx],
                "subtask": [self.subtask[i] for i in idx],
            }
            | ({} if self.weights is None else {"full_state_weight": torch.from_numpy(self.weights[idx])})
            | ({} if self.actions is None else {"actions": torch.from_numpy(self.actions[idx])})
        )


def build_processor(ep_ds, cfg: SFTWLAConfig, image_size: int) -> WLAProcessor:
    """Word-level tokenizer over the dataset's instructions and subtasks (+ the simulator's instruction templates)."""
    corpus = set(ep_ds.dataset.unique("instruction")) | set(ep_ds.dataset.unique("subtask"))
    if importlib.util.find_spec("rollout") is not None:
        from rollout.sims.instructions import INSTRUCTIONS  # templates the real env may phrase differently

        corpus |= {s for phrasings in INSTRUCTIONS.values() for s in phrasings}
    return WLAProcessor.build(sorted(corpus), image_size=image_size, max_subtask_tokens=cfg.max_subtask_tokens)


def build_policy(cfg: SFTWLAConfig, processor: WLAProcessor, windows: WindowBatches, image_size: int) -> WLAPolicy:
    config = WLAConfig(
        image_size=image_size,
        latent_size=cfg.latent_size,
        latent_channels=cfg.latent_channels,
        tokenizer_channels=cfg.tokenizer_channels,
        latent_noise_std=cfg.latent_noise_std,
        latent_patch=cfg.latent_patch,
        recon_fraction=cfg.recon_fraction,
        latent_state_weight=cfg.latent_state_weight,
        meta_state_weight=cfg.meta_state_weight,
        state_dim=windows.states.shape[1],
        full_state_dim=windows.full_states.shape[1] if cfg.world_full_state else 0,
        action_dim=windows.actions.shape[1],
        chunk_size=cfg.chunk_size,
        backbone_config=tiny_llama_config(cfg.hidden_size, cfg.num_layers, cfg.num_heads),
        vocab_size=processor.vocab_size,
        max_subtask_tokens=cfg.max_subtask_tokens,
        num_meta_queries=cfg.num_meta_queries,
        action_head=cfg.action_head,
        action_hidden=cfg.action_hidden,
        flow_steps=cfg.flow_steps,
        world_hidden=cfg.world_hidden,
        world_layers=cfg.world_layers,
    )
    policy = WLAPolicy(config, processor=processor)
    acts = windows.actions[windows.rows]  # real actions only (no is_last rows)
    full = {}
    if cfg.world_full_state:
        full = dict(full_state_mean=windows.full_states.mean(0), full_state_std=windows.full_states.std(0))
    policy.set_normalization(
        windows.states.mean(0), windows.states.std(0), acts.mean(0), acts.std(0), min_std=1e-2, **full
    )
    return policy


def save_atomic(policy: WLAPolicy, path: Path) -> None:
    """save_pretrained into a temp dir, then swap it in: `path` is always absent or complete."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    policy.save_pretrained(tmp)
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_stage(
    policy, windows, cfg, stage: str, steps: int, log, rng: np.random.Generator, frames: StateFrames | None = None
) -> None:
    """Run `steps` optimisation steps of `stage` ("tokenizer": reconstruction only; "probe": the backbone state probe
    on `frames` alone; "joint": all SFT losses, and with `frames` the state probe on a batch of them per step)."""
    from tqdm.auto import tqdm

    if steps == 0:
        return
    if stage == "probe" and frames is None:
        raise ValueError("train_stage: the probe stage trains on state-probe frames; got frames=None")
    frame_batch = cfg.meta_state_frame_batch or cfg.batch_size

    def frame_losses() -> dict[str, torch.Tensor]:
        """The losses on a fresh draw of frames, with "loss": the state probe's error (weight 1 in the probe stage,
        meta_state_weight beside a joint step) plus meta_state_frame_action_weight × the action loss on labelled
        frames."""
        out = policy.frame_losses(frames.batch(frames.draw(rng, frame_batch)), noise=cfg.meta_state_frame_noise)
        probe_weight = 1.0 if stage == "probe" else cfg.meta_state_weight
        out["loss"] = probe_weight * out["loss/meta_state_frames"]
        if "loss/action_frames" in out:
            out["loss"] = out["loss"] + cfg.meta_state_frame_action_weight * out["loss/action_frames"]
        return out

    if stage == "tokenizer":
        # the image tokenizer, and the latent state probe that shapes its encoder
        probe = policy.latent_probe.parameters() if policy.latent_probe is not None else []
        params = [*policy.image_tokenizer.parameters(), *probe]
    else:
        params = policy.parameters()
    lr = cfg.tokenizer_learning_rate if stage == "tokenizer" else cfg.learning_rate
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, min(cfg.warmup_steps, steps)))
    policy.train()
    acc: dict[str, list[float]] = {}
    t_log = time.perf_counter()
    bar = tqdm(range(steps), desc=f"sft_wla[{stage}]", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        if stage == "probe":
            out = frame_losses()
        else:
            # the tokenizer reconstructs frames: one-chunk windows; the joint stage reads K chunks when asked
            tokenizer = stage == "tokenizer"
            batch = windows.batch(rng.integers(0, len(windows), cfg.batch_size), chunks=1 if tokenizer else None)
            out = policy.tokenizer_losses(batch) if tokenizer else policy.sft_losses(batch)
            if frames is not None and stage == "joint":
                extra = frame_losses()
                out.update({k: v for k, v in extra.items() if k != "loss"})
                out["loss"] = out["loss"] + extra["loss"]
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            acc.setdefault("train/grad_norm", []).append(float(gnorm))
        opt.step()
        sched.step()
        for k, v in out.items():
            acc.setdefault(k, []).append(float(v.detach()))
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == steps:
            dt = time.perf_counter() - t_log
            n = len(acc["loss"])
            row = {k: float(np.mean(v)) for k, v in acc.items()}
            rows = frame_batch if stage == "probe" else cfg.batch_size  # windows a step (frames in the probe stage)
            row.update({"train/lr": sched.get_last_lr()[0], "train/samples_per_s": n * rows / dt})
            log(stage, step + 1, row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            acc, t_log = {}, time.perf_counter()
        if stage == "joint" and cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < steps:
            save_atomic(policy, Path(cfg.output_dir) / f"checkpoint-{step + 1}")
            policy.train()
    bar.close()
    policy.eval()


def real_eval(policy: WLAPolicy, tasks: list[str], meta: dict, cfg: SFTWLAConfig) -> dict[str, float]:
    """Real-sim success of `policy` (deterministic, world off) and, if asked, with test-time scaling."""
    if cfg.eval_episodes_per_task <= 0:
        return {}
    if importlib.util.find_spec("rollout") is None or importlib.util.find_spec("metaworld") is None:
        logger.warning("real-sim evaluation skipped: rollout / metaworld not importable (pip install -e .[metaworld])")
        return {}
    from rollout.real import rollout_policy

    env_kwargs = {"image_size": policy.config.image_size, "camera": meta.get("camera", "corner")}
    common = dict(
        seeds=cfg.eval_seed, num_workers=cfg.eval_num_workers, max_episode_steps=cfg.eval_max_episode_steps,
        timeout_s=cfg.eval_timeout_s, env_kwargs=env_kwargs, keep_episodes=False,
    )  # fmt: skip
    metrics = rollout_policy(policy, tasks, cfg.eval_episodes_per_task, **common).metrics("eval")
    if cfg.eval_tts_candidates > 1:
        k = cfg.eval_tts_candidates

        def tts_policy(obs):  # K sampled chunks, imagined, best predicted success executed
            return policy.act(obs.to(policy.device), sample=True, num_candidates=k).actions

        metrics.update(rollout_policy(tts_policy, tasks, cfg.eval_episodes_per_task, **common).metrics("eval_tts"))
    return metrics


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse_config(SFTWLAConfig, "sft_wla", argv)
    if cfg.dataset_path is None:
        raise ValueError("sft_wla: --dataset_path is required (run recipes/collect_demos.py first)")
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    metrics_path = out / "metrics.jsonl"
    metrics_file = open(metrics_path, "w")
    t_start, cpu_start = time.perf_counter(), time.process_time()  # CPU time: robust to a shared machine

    def log(stage: str, step: int, row: dict[str, float]) -> None:
        rec = {"stage": stage, "step": step, **row, "train/wall_s": time.perf_counter() - t_start,
               "train/cpu_s": time.process_time() - cpu_start}  # fmt: skip
        metrics_file.write(json.dumps(rec) + "\n")
        metrics_file.flush()

    ep_ds = load_episodes(cfg.dataset_path)
    windows = WindowBatches(
        ep_ds, cfg.chunk_size, cfg.bc_noise_modes, cfg.bc_successful_only, chunks=cfg.world_open_loop_chunks
    )
    image_size = windows.images.shape[1]
    if windows.images.shape[2] != image_size:
        raise ValueError(f"{cfg.dataset_path}: images must be square, got {windows.images.shape[1:3]}")
    processor = build_processor(ep_ds, cfg, image_size)
    policy = build_policy(cfg, processor, windows, image_size)
    tasks = list(ep_ds.meta.get("tasks") or sorted(set(windows.task_name)))
    policy.config.task_names = tasks
    sizes = policy.num_parameters_by_part
    logger.info("dataset %s: %d episodes, %d windows (%.0f %% imitated); parameters %s", cfg.dataset_path,
                ep_ds.num_episodes, len(windows), 100 * windows.action_weight.mean(), sizes)  # fmt: skip
    log("setup", 0, {f"model/params_{k}": float(v) for k, v in sizes.items()} | {"data/windows": float(len(windows))})

    frames = None
    if cfg.meta_state_frames > 0:
        frames = StateFrames.collect(ep_ds, windows, cfg, image_size)
        if cfg.meta_state_frame_norm == "task":
            frames.weigh_by_task(policy.full_state_mean.numpy(), policy.full_state_std.numpy())
        if cfg.meta_state_frame_dims:
            frames.keep_dims(cfg.meta_state_frame_dims)
            logger.info(
                "state-probe frames: the probe's error counts full-state dimensions %s", cfg.meta_state_frame_dims
            )
        if cfg.meta_state_frame_task_weights:
            tasks = list(frames.task_rows)
            shares = frames.weigh_draws(parse_task_weights(cfg.meta_state_frame_task_weights, tasks))
            logger.info("state-probe frame draws by task: %s", {t: round(v, 3) for t, v in shares.items()})
        logger.info("state-probe frames: %d (%d per task, seeds %d+, up to %d random, %d target and %d expert steps, "
                    "%s)", len(frames), cfg.meta_state_frames, cfg.meta_state_frame_seed, cfg.meta_state_frame_steps,
                    cfg.meta_state_frame_target_steps, cfg.meta_state_frame_expert_steps,
                    "with expert chunks" if frames.actions is not None else "no action labels")  # fmt: skip
    train_stage(policy, windows, cfg, "tokenizer", cfg.tokenizer_steps, log, rng)
    train_stage(policy, windows, cfg, "probe", cfg.meta_state_pre_steps, log, rng, frames)
    train_stage(policy, windows, cfg, "joint", cfg.max_steps, log, rng, frames)
    train_s, train_cpu_s = time.perf_counter() - t_start, time.process_time() - cpu_start
    save_atomic(policy, out / "final")
    logger.info("saved %s after %.0f s of training", out / "final", train_s)

    results = {
        "train/wall_s_total": train_s,
        "train/cpu_s_total": train_cpu_s,
        **real_eval(policy, tasks, ep_ds.meta, cfg),
    }
    log("final", cfg.max_steps, results)
    (out / "eval_results.json").write_text(json.dumps(results, indent=2))
    if "eval/real_success" in results:
        logger.info("real-sim success %.3f [%.3f, %.3f]", results["eval/real_success"],
                    results["eval/real_success_ci_low"], results["eval/real_success_ci_high"])  # fmt: skip
    metrics_file.close()


if __name__ == "__main__":
    main(sys.argv[1:])
