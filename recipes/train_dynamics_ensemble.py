"""Train the dynamics ensemble behind the `dynamics_disagreement` reward (a MOPO-style uncertainty penalty).

    python recipes/train_dynamics_ensemble.py --dataset_path runs/demos --output_dir runs/dynamics_ensemble
    python recipes/train_dynamics_ensemble.py --dataset_path runs/demos runs/round1 --output_dir runs/dynamics_ensemble \
        --members 5 --steps 3000

Pairs are (full state at t, actions t..t+H-1, full state at t+H) inside episodes; every member fits the standardised
change of the full state on its own bootstrap resample from its own seed. Each task's episodes are split into train
and held-out; the recipe prints the held-out MSE of every member and of the ensemble mean (standardised units) next
to predicting no change, and the correlation between the ensemble's disagreement and its actual error.

Writes to output_dir: config.json (this config), final/ (config.json + model.safetensors; load with
`rewards.dynamics_ensemble.load_dynamics_ensemble(output_dir)`), metrics.json. Use it in GRPO as a penalty of weight
λ: ``--reward_funcs state_progress dynamics_disagreement --reward_weights 1.0 1.0
--reward_kwargs '{"dynamics_disagreement": {"dynamics_ensemble_path": "runs/dynamics_ensemble"}}'``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from rewards.dynamics_ensemble import train_dynamics_ensemble  # noqa: E402
from wlarl.cli import parse_config, save_config  # noqa: E402


@dataclass
class TrainDynamicsEnsembleConfig:
    """Options of recipes/train_dynamics_ensemble.py (section `train_dynamics_ensemble:` of a preset)."""

    dataset_path: list[str] = field(
        default_factory=list, metadata={"help": "One or more episode datasets (write_episodes folders)."}
    )
    output_dir: str = field(default="runs/dynamics_ensemble", metadata={"help": "Where the ensemble and metrics go."})
    horizon: int = field(default=8, metadata={"help": "H, actions per chunk: the policy's chunk_size."})
    stride: int = field(default=1, metadata={"help": "Spacing of chunk starts within an episode (1: every step)."})
    members: int = field(default=5, metadata={"help": "M, ensemble members (≥ 2; 3 or more recommended)."})
    hidden: int = field(default=128, metadata={"help": "Width of each member's hidden layers."})
    layers: int = field(default=2, metadata={"help": "Hidden layers per member."})
    steps: int = field(default=2000, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=256, metadata={"help": "Pairs per member per step."})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate (warm-up then cosine)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    bootstrap: bool = field(default=True, metadata={"help": "Each member trains on its own bootstrap resample."})
    holdout_fraction: float = field(default=0.2, metadata={"help": "Episodes per task held out for the metrics."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the split, resamples and sampling; member m inits from seed+m."}
    )
    progress_bar: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self) -> None:
        if isinstance(self.dataset_path, str):
            self.dataset_path = [self.dataset_path]
        if not self.dataset_path:
            raise ValueError(
                "train_dynamics_ensemble: set --dataset_path to one or more episode datasets "
                "(recipes/collect_demos.py output)"
            )
        if self.members < 2:
            raise ValueError(
                f"train_dynamics_ensemble: members must be ≥ 2 (3 or more recommended), got {self.members}"
            )
        for name in ("horizon", "stride", "hidden", "layers", "steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train_dynamics_ensemble: {name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(
                f"train_dynamics_ensemble: holdout_fraction must be in (0, 1) (the metrics need held-out episodes), "
                f"got {self.holdout_fraction}"
            )


def main() -> None:
    cfg = parse_config(TrainDynamicsEnsembleConfig, "train_dynamics_ensemble")
    out = Path(cfg.output_dir)
    save_config(cfg, out)
    _, metrics = train_dynamics_ensemble(
        cfg.dataset_path,
        out,
        horizon=cfg.horizon,
        stride=cfg.stride,
        members=cfg.members,
        hidden=cfg.hidden,
        layers=cfg.layers,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        bootstrap=cfg.bootstrap,
        holdout_fraction=cfg.holdout_fraction,
        seed=cfg.seed,
        progress_bar=cfg.progress_bar,
    )
    for key, value in metrics.items():
        if key.startswith(("data/", "train/mse", "heldout/", "time/")):
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"[train_dynamics_ensemble] {key} = {shown}")
    print(f"[train_dynamics_ensemble] saved {out / 'final'}", flush=True)


if __name__ == "__main__":
    main()
