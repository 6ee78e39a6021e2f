"""Train the state reward model (the `state_success` / `state_progress` / `state_value` rewards) on full states.

    python recipes/train_state_reward.py --dataset_path runs/demos --output_dir runs/state_reward
    python recipes/train_state_reward.py --dataset_path runs/demos runs/round1 --output_dir runs/state_reward --steps 5000

Rows are the full simulator states after every action, labelled with that step's success and shaped reward, and
(value head) with the discounted success-to-go value_discount ** (env steps to the episode's next successful state).
Each task's episodes are split into train, calibration (Platt scaling and the success threshold) and held-out (the
reported metrics: success AUROC, accuracy at the threshold, progress Spearman / MSE, per-task AUROC, value MAE /
Spearman and AUROC for success within 24 env steps).

Writes to output_dir: config.json (this config), final/ (config.json + model.safetensors; load with
`rewards.state_reward.load_state_reward(output_dir)`), metrics.json. Use it in GRPO with
``--reward_funcs state_progress --reward_kwargs '{"state_progress": {"state_reward_path": "runs/state_reward"}}'``
(``state_value`` likewise: it needs the value head, ``--value_head true``, the default).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from rewards.state_reward import train_state_reward  # noqa: E402
from wlarl.cli import parse_config, save_config  # noqa: E402


@dataclass
class TrainStateRewardConfig:
    """Options of recipes/train_state_reward.py (section `train_state_reward:` of a preset)."""

    dataset_path: list[str] = field(
        default_factory=list, metadata={"help": "One or more episode datasets (write_episodes folders)."}
    )
    output_dir: str = field(default="runs/state_reward", metadata={"help": "Where the model and metrics go."})
    steps: int = field(default=3000, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=256, metadata={"help": "States per step."})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate (warm-up then cosine)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    hidden: int = field(default=128, metadata={"help": "Width of the MLP's hidden layers."})
    layers: int = field(default=2, metadata={"help": "Number of hidden layers."})
    features: str = field(
        default="auto",
        metadata={"help": "'metaworld' (adds object/hand/goal offsets), 'raw', or 'auto' (metaworld when F = 39)."},
    )
    reward_scale: float = field(default=10.0, metadata={"help": "Progress target = clip(reward / scale, 0, 1)."})
    progress_weight: float = field(default=1.0, metadata={"help": "Weight of the progress MSE (0: success only)."})
    value_head: bool = field(
        default=True, metadata={"help": "Train a value head (discounted success-to-go; the state_value reward)."}
    )
    value_discount: float = field(
        default=0.99, metadata={"help": "Value target γ^k per env step k to the next success, γ in (0, 1]."}
    )
    value_weight: float = field(default=1.0, metadata={"help": "Weight of the value BCE (with --value_head true)."})
    holdout_fraction: float = field(default=0.1, metadata={"help": "Episodes per task held out for the metrics."})
    calibration_fraction: float = field(
        default=0.1, metadata={"help": "Episodes per task for Platt scaling and the threshold."}
    )
    threshold_rule: str = field(default="f1", metadata={"help": "Threshold choice: 'f1' or 'youden'."})
    seed: int = field(default=0, metadata={"help": "Seed of the splits, sampling and initialisation."})
    progress_bar: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self) -> None:
        if isinstance(self.dataset_path, str):
            self.dataset_path = [self.dataset_path]
        if not self.dataset_path:
            raise ValueError(
                "train_state_reward: set --dataset_path to one or more episode datasets (recipes/collect_demos.py "
                "output)"
            )
        if self.features not in ("auto", "metaworld", "raw"):
            raise ValueError(
                f"train_state_reward: features must be 'auto', 'metaworld' or 'raw', got {self.features!r}"
            )
        if self.threshold_rule not in ("f1", "youden"):
            raise ValueError(
                f"train_state_reward: threshold_rule must be 'f1' or 'youden', got {self.threshold_rule!r}"
            )
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"train_state_reward: steps ({self.steps}) and batch_size ({self.batch_size}) must be > 0"
            )
        if not 0 < self.value_discount <= 1:
            raise ValueError(f"train_state_reward: value_discount must be in (0, 1], got {self.value_discount}")
        fractions = (self.holdout_fraction, self.calibration_fraction)
        if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
            raise ValueError(
                f"train_state_reward: holdout_fraction ({self.holdout_fraction}) and calibration_fraction "
                f"({self.calibration_fraction}) must be in [0, 1) with a sum below 1"
            )


def main() -> None:
    cfg = parse_config(TrainStateRewardConfig, "train_state_reward")
    out = Path(cfg.output_dir)
    save_config(cfg, out)
    model, metrics = train_state_reward(
        cfg.dataset_path,
        out,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        hidden=cfg.hidden,
        layers=cfg.layers,
        features=cfg.features,
        reward_scale=cfg.reward_scale,
        progress_weight=cfg.progress_weight,
        value_head=cfg.value_head,
        value_discount=cfg.value_discount,
        value_weight=cfg.value_weight,
        holdout_fraction=cfg.holdout_fraction,
        calibration_fraction=cfg.calibration_fraction,
        threshold_rule=cfg.threshold_rule,
        seed=cfg.seed,
        progress_bar=cfg.progress_bar,
    )
    for key, value in metrics.items():
        if key.startswith(("data/", "calibration/", "heldout/", "time/")):
            print(
                f"[train_state_reward] {key} = {value:.4g}"
                if isinstance(value, float)
                else f"[train_state_reward] {key} = {value}"
            )
    print(f"[train_state_reward] saved {out / 'final'} (threshold {model.config.threshold:.3f})", flush=True)


if __name__ == "__main__":
    main()
