"""Train the subgoal success classifier (the `subgoal_success` reward model) on real frames and success labels.

    python recipes/train_reward.py --config debug --dataset_path runs/demos --output_dir runs/reward
    python recipes/train_reward.py --config default --dataset_path runs/demos --output_dir runs/reward \
        --policy_path runs/sft/final      # also evaluate (and optionally fine-tune) on World-Expert frames
    python recipes/train_reward.py --config default --dataset_path runs/demos --output_dir runs/reward \
        --extra_dataset_paths runs/near_miss   # add near misses (collect_demos --noise_modes near_miss)

Episodes are split by episode into train / validation / test. Training samples positives, hard negatives (arm in a
success pose, object not) and other negatives with fixed shares, with augmentation that imitates World-Expert
frames. Platt scaling and the decision threshold are fitted on the validation split; AUROC, calibration (ECE,
reliability table), the hard-negative false-positive rate and, with `--progress_head true`, the progress Spearman
(all frames and the unsolved ones) are reported on the held-out test split and, with
`--policy_path`, on World-Expert-predicted frames labelled with the real outcome. Extra datasets
(`--extra_dataset_paths`) are split by episode the same way and added to every split; their hard negatives are found
against the success poses of all datasets; `eval/real/` stays on the held-out episodes of `--dataset_path` (comparable
with a run without extras) and `eval/extra/` reports the held-out episodes of the extras.

Writes to output_dir: config.json (this config), final/ (the model, save_pretrained; load with
`rewards.success_classifier.load_success_classifier(output_dir)` or use `--reward_model_path output_dir` in
grpo_world), metrics.jsonl, results.json (final metrics with reliability tables).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from rewards.success_classifier import (  # noqa: E402
    FrameSet,
    SuccessClassifier,
    SuccessClassifierConfig,
    calibrate_classifier,
    evaluate_classifier,
    format_reliability,
    frames_from_datasets,
    load_success_classifier,
    predicted_frames,
    split_by_episode,
    train_success_classifier,
)
from wlarl.cli import parse_config, save_config  # noqa: E402


@dataclass
class TrainRewardConfig:
    """Options of recipes/train_reward.py (section `train_reward:` of a preset)."""

    dataset_path: str = field(
        default="", metadata={"help": "Episode dataset (save_to_disk folder) with success labels."}
    )
    extra_dataset_paths: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More episode datasets (e.g. collect_demos --noise_modes near_miss), split by episode like "
            "dataset_path and added to every split; reported apart as eval/extra/."
        },
    )
    output_dir: str = field(default="runs/reward", metadata={"help": "Where the model, metrics and config go."})
    policy_path: str = field(
        default="", metadata={"help": "Trained WLA policy; its World Expert predicts frames to evaluate/fine-tune on."}
    )
    init_model_path: str = field(
        default="",
        metadata={"help": "Continue from a trained classifier (a train_reward output_dir) instead of a new one."},
    )
    image_size: int = field(default=64, metadata={"help": "Classifier input side in pixels."})
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128], metadata={"help": "Conv block widths."})
    hidden_size: int = field(default=128, metadata={"help": "MLP head width."})
    task_embed_dim: int = field(default=32, metadata={"help": "Task embedding size."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout in the head."})
    progress_head: bool = field(
        default=False,
        metadata={
            "help": "Also regress each frame's progress, clip(shaped reward / 10, 0, 1), beside the success logit "
            "(the `subgoal_progress` reward reads it)."
        },
    )
    progress_coef: float = field(default=1.0, metadata={"help": "Weight of the progress loss (with progress_head)."})
    max_steps: int = field(
        default=2000, metadata={"help": "Optimizer steps on real frames (0: none, with init_model_path)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Frames per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (warm-up then cosine)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    eval_steps: int = field(default=200, metadata={"help": "Log train loss and validation AUROC every N steps."})
    val_fraction: float = field(default=0.15, metadata={"help": "Episodes for calibration and threshold choice."})
    test_fraction: float = field(default=0.15, metadata={"help": "Held-out episodes for the reported metrics."})
    hard_negative_radius: float = field(
        default=0.05, metadata={"help": "Metres: failed-episode frames with the hand this close to a success pose."}
    )
    early_negative_fraction: float = field(
        default=0.3, metadata={"help": "Frames in the first X of a successful episode (before success) count as hard."}
    )
    boundary_margin: int = field(
        default=2, metadata={"help": "Leave the N frames before each first success out of training (not evaluation)."}
    )
    hard_negative_fraction: float = field(
        default=0.25, metadata={"help": "Share of each batch from hard (and early) negatives."}
    )
    augment_strength: float = field(default=1.0, metadata={"help": "Scale of blur/noise/shift/colour jitter (0=off)."})
    threshold_rule: str = field(default="f1", metadata={"help": "Threshold choice on validation: 'f1' or 'youden'."})
    predicted_max_windows: int = field(default=1000, metadata={"help": "Predicted frames per split (policy_path)."})
    predicted_horizon: int = field(default=0, metadata={"help": "Actions per imagined chunk; 0 = the policy's own."})
    predicted_finetune_steps: int = field(
        default=0, metadata={"help": "Extra steps on real + predicted training frames (needs policy_path)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of splits, sampling and augmentation."})

    def __post_init__(self) -> None:
        if not self.dataset_path:
            raise ValueError(
                "train_reward: set --dataset_path to an episode dataset (recipes/collect_demos.py output)"
            )
        if (
            not 0 < self.val_fraction < 1
            or not 0 <= self.test_fraction < 1
            or self.val_fraction + self.test_fraction >= 1
        ):
            raise ValueError(
                f"train_reward: val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) must be in "
                f"[0, 1) with val > 0 and a sum below 1"
            )
        if self.max_steps <= 0 and not self.init_model_path:
            raise ValueError(
                "train_reward: max_steps must be > 0 (or give --init_model_path to continue from a model)"
            )
        if self.threshold_rule not in ("f1", "youden"):
            raise ValueError(f"train_reward: threshold_rule must be 'f1' or 'youden', got {self.threshold_rule!r}")
        if self.predicted_finetune_steps > 0 and not self.policy_path:
            raise ValueError("train_reward: predicted_finetune_steps > 0 needs --policy_path (the World Expert)")
        if self.progress_coef < 0:
            raise ValueError(f"train_reward: progress_coef must be >= 0, got {self.progress_coef}")
        if self.image_size % (2 ** len(self.channels)) != 0:
            raise ValueError(f"train_reward: image_size {self.image_size} must be divisible by 2**len(channels)")


def main() -> None:
    cfg = parse_config(TrainRewardConfig, "train_reward")
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    metrics_file = open(out / "metrics.jsonl", "w")

    def log(step: int, metrics: dict) -> None:
        row = {"step": step, **{k: v for k, v in metrics.items() if not k.endswith("reliability")}}
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    # --- data: labelled frames, hard negatives, split by episode (each dataset on its own, then concatenated)
    t0 = time.perf_counter()
    per_dataset = frames_from_datasets(
        [cfg.dataset_path, *cfg.extra_dataset_paths],
        cfg.hard_negative_radius,
        cfg.early_negative_fraction,
        cfg.boundary_margin,
    )
    splits = [split_by_episode(f, [cfg.val_fraction, cfg.test_fraction], seed=cfg.seed) for f in per_dataset]
    frames = per_dataset[0] if len(per_dataset) == 1 else FrameSet.cat(per_dataset)
    train, val = (FrameSet.cat([s[i] for s in splits]) for i in (0, 1))
    train = train.subset(np.flatnonzero(~train.boundary))  # near-identical to positives: label noise in training
    test = splits[0][2]  # held-out episodes of dataset_path; those of the extras are reported apart
    test_extra = FrameSet.cat([s[2] for s in splits[1:]]) if cfg.extra_dataset_paths else None
    parts = [("all", frames), ("train", train), ("val", val), ("test", test)]
    if test_extra is not None:
        parts += [("extra", FrameSet.cat(per_dataset[1:])), ("test_extra", test_extra)]
    for name, part in parts:
        print(f"[train_reward] {name}: {part.summary()}", flush=True)

    # --- model: new, or a trained one to continue from (e.g. to fine-tune on World-Expert frames only)
    if cfg.init_model_path:
        model = load_success_classifier(cfg.init_model_path)
        model.task_ids(sorted(set(frames.task_names)))  # every task of the dataset must be in its vocabulary
        if cfg.progress_head and not model.config.progress_head:
            raise ValueError(
                f"train_reward: --progress_head true, but {cfg.init_model_path} has no progress head; train a new "
                f"model (no --init_model_path) to add one"
            )
    else:
        model = SuccessClassifier(
            SuccessClassifierConfig(
                task_names=sorted(set(frames.task_names)),
                image_size=cfg.image_size,
                channels=cfg.channels,
                hidden_size=cfg.hidden_size,
                task_embed_dim=cfg.task_embed_dim,
                dropout=cfg.dropout,
                progress_head=cfg.progress_head,
            )
        )
    train_kwargs = dict(
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        hard_negative_fraction=cfg.hard_negative_fraction,
        augment_strength=cfg.augment_strength,
        eval_steps=cfg.eval_steps,
        log_fn=log,
        progress_coef=cfg.progress_coef,
    )

    # --- train on real frames
    if cfg.max_steps > 0:
        train_success_classifier(
            model, train, val, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, seed=cfg.seed, **train_kwargs
        )

    # --- World-Expert-predicted frames (labelled with the real outcome), optional fine-tuning on them
    predicted: dict[str, FrameSet] = {}
    if cfg.policy_path:
        from wlarl import WLAPolicy

        policy = WLAPolicy.from_pretrained(cfg.policy_path).eval()
        horizon = cfg.predicted_horizon or _policy_horizon(policy)
        # on episodes of dataset_path (predicted_frames reads that dataset; extras keep ids past its own)
        for name, part in (("train", splits[0][0]), ("val", splits[0][1]), ("test", test)):
            if len(part) and (name != "train" or cfg.predicted_finetune_steps > 0):
                predicted[name] = predicted_frames(
                    policy,
                    cfg.dataset_path,
                    horizon,
                    np.unique(part.episode),
                    cfg.predicted_max_windows,
                    seed=cfg.seed,
                    keep_hard_negatives=name == "train",
                    hard_negative_radius=cfg.hard_negative_radius,
                    early_fraction=cfg.early_negative_fraction,
                )
                print(f"[train_reward] predicted {name}: {predicted[name].summary()}", flush=True)
        if cfg.predicted_finetune_steps > 0:
            train_success_classifier(
                model,
                FrameSet.cat([train, predicted["train"]]),
                predicted.get("val"),
                max_steps=cfg.predicted_finetune_steps,
                learning_rate=cfg.learning_rate * 0.3,
                seed=cfg.seed + 1,
                **train_kwargs,
            )

    # --- calibrate on validation (real + predicted when available: the reward scores predicted frames)
    calib = FrameSet.cat([val, predicted["val"]]) if "val" in predicted else val
    if not (calib.labels.any() and (~calib.labels).any()):
        # too few episodes to hold some out with both outcomes (e.g. the debug preset): calibrate on training frames
        print(
            f"[train_reward] WARNING: validation split {calib.summary()} lacks a class; calibrating on the training "
            f"frames (optimistic). Collect more episodes for a held-out calibration.",
            flush=True,
        )
        calib = train
    results = calibrate_classifier(model, calib, cfg.threshold_rule)

    # --- report on held-out episodes
    if len(val):
        results.update(evaluate_classifier(model, val, "val/"))
    if len(test):
        results.update(evaluate_classifier(model, test, "eval/real/"))
    if test_extra is not None and len(test_extra):
        results.update(evaluate_classifier(model, test_extra, "eval/extra/"))
    if "test" in predicted:
        results.update(evaluate_classifier(model, predicted["test"], "eval/predicted/"))
    results["time/total_s"] = time.perf_counter() - t0
    log(cfg.max_steps + cfg.predicted_finetune_steps, results)
    metrics_file.close()

    model.save_pretrained(out / "final")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for key in ("eval/real/", "eval/extra/", "eval/predicted/", "val/"):
        if f"{key}reliability" in results:
            print(
                f"\n[train_reward] reliability on {key.rstrip('/')} (AUROC {results[f'{key}auroc']:.4f}, "
                f"ECE {results[f'{key}ece']:.4f}):\n{format_reliability(results[f'{key}reliability'])}"
            )
    print(f"[train_reward] saved {out / 'final'} (threshold {model.config.threshold:.3f})", flush=True)


def _policy_horizon(policy: object) -> int:
    config = getattr(policy, "config", None)
    for name in ("action_horizon", "chunk_size", "horizon", "num_actions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        "train_reward: cannot read the action-chunk length from the policy config; set --predicted_horizon"
    )


if __name__ == "__main__":
    main()
