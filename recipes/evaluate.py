"""Evaluate a WLA checkpoint in the real simulator and in imagination; write JSON and a markdown table.

Launch (the default preset's `evaluate` section, any saved policy folder):

    MUJOCO_GL=egl python recipes/evaluate.py --checkpoint runs/grpo/final --output_dir runs/eval

Debug preset (2 episodes of reach-v3, in-process simulator):

    MUJOCO_GL=egl python recipes/evaluate.py --config debug --checkpoint runs/sft/final --output_dir runs/eval_debug

The same seeded episodes (seed = `seed` + episode index, for every task) run in the real simulator and, when
`imagination` is on, in imagination with the World Expert of `simulator_path` (default: the checkpoint
itself). Writes to `output_dir`: `results.json` (real success per task with 95 % Wilson intervals, episode
lengths, lost episodes, and the paired imagined-vs-real metrics), `results.md` (the same as tables),
`videos/` (real episodes; real | imagined and real | world-replay strips) and `config.json`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rollout.real import rollout_policy
from rollout.verify import make_imagine_fn, paired_verification
from wlarl.cli import parse_config, save_config
from wlarl.configs import SUCCESS_SIGNALS
from wlarl.utils.stats import success_summary
from wlarl.utils.video import write_video

logger = logging.getLogger("wlarl.evaluate")


@dataclass
class EvaluateConfig:
    """Config of recipes/evaluate.py."""

    checkpoint: str = field(default="", metadata={"help": "Policy folder (save_pretrained output) to evaluate."})
    output_dir: str = field(default="runs/evaluate", metadata={"help": "Where results, videos and config go."})
    tasks: list[str] = field(default_factory=lambda: ["reach-v3"], metadata={"help": "Simulator task names."})
    episodes_per_task: int = field(default=10, metadata={"help": "Real episodes per task."})
    seed: int = field(default=0, metadata={"help": "Base reset seed: episode e of every task uses seed + e."})
    num_workers: int = field(default=2, metadata={"help": "Simulator worker processes (0: in this process)."})
    max_episode_steps: int = field(default=150, metadata={"help": "Step limit of a real episode."})
    image_size: int = field(default=0, metadata={"help": "Camera size in pixels; 0: the policy's image_size."})
    timeout_s: float = field(default=3600.0, metadata={"help": "Wall-clock budget of the real evaluation."})
    num_videos: int = field(default=1, metadata={"help": "Videos written per task."})
    imagination: bool = field(default=True, metadata={"help": "Also imagine the same starts and compare (paired)."})
    simulator_path: str | None = field(
        default=None, metadata={"help": "Checkpoint whose World Expert imagines (default: the checkpoint itself)."}
    )
    success_threshold: float = field(
        default=0.5, metadata={"help": "The success head calls imagined success when sigmoid(logit) ≥ this."}
    )
    success_signal: str = field(
        default="head",
        metadata={
            "help": "What decides imagined success: 'head' (World Expert), 'classifier' (reward_model_path on the "
            "predicted frame) or 'both', as GRPOWorldConfig.success_signal."
        },
    )
    reencode_predictions: bool = field(
        default=True, metadata={"help": "Imagination feeds the policy encode(decode(prediction)), as in training."}
    )
    sampled_temperature: float = field(
        default=0.0,
        metadata={
            "help": "> 0: also run the same seeds with the policy sampling at this temperature (what GRPO "
            "optimises) and report that success next to the greedy one; 0: greedy only."
        },
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Success classifier to check on real frames (reward precision/recall)."}
    )
    world_chunks: int = field(default=4, metadata={"help": "Chunks of open-loop World-Expert fidelity."})
    device: str = field(default="cpu", metadata={"help": "Torch device of the policy."})

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("evaluate: set --checkpoint to a saved policy folder (config.json + model.safetensors)")
        if not self.tasks:
            raise ValueError("evaluate: set --tasks, e.g. --tasks reach-v3 push-v3")
        if self.episodes_per_task < 1:
            raise ValueError(f"evaluate: episodes_per_task must be ≥ 1, got {self.episodes_per_task}")
        if self.max_episode_steps < 1:
            raise ValueError(f"evaluate: max_episode_steps must be ≥ 1, got {self.max_episode_steps}")
        if not 0.0 < self.success_threshold < 1.0:
            raise ValueError(f"evaluate: success_threshold must lie in (0, 1), got {self.success_threshold}")
        if self.success_signal == "state":
            raise ValueError(
                "evaluate: success_signal='state' (the state reward model) is for grpo_world; use 'classifier', "
                "'head' or 'both' here"
            )
        if self.success_signal not in SUCCESS_SIGNALS:
            raise ValueError(f"evaluate: success_signal must be one of {SUCCESS_SIGNALS}, got {self.success_signal!r}")
        if self.success_signal != "head" and not self.reward_model_path:
            raise ValueError(
                f"evaluate: success_signal={self.success_signal!r} needs --reward_model_path (or --success_signal head)"
            )
        if self.sampled_temperature < 0:
            raise ValueError(
                f"evaluate: sampled_temperature must be ≥ 0 (0: greedy only), got {self.sampled_temperature}"
            )


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(results: dict) -> str:
    """Results as markdown tables: success per task with Wilson intervals, then the paired metrics."""
    real = results["real"]
    lines = [
        f"# Evaluation of `{results['checkpoint']}`",
        "",
        f"Real simulator: {real['episodes']} episodes, seeds {results['seeds'][0]}…{results['seeds'][-1]} per task, "
        f"{real['lost']} lost, timed out: {real['timed_out']}, {real['wall_s']:.0f} s.",
        "",
        "| task | success | 95 % CI | episodes | imagined success |",
        "|---|---|---|---|---|",
    ]
    imagined = results.get("imagined_per_task", {})
    for task, s in real["per_task"].items():
        lines.append(
            f"| {task} | {_fmt(s['success'])} | [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}] | {s['n']} | "
            f"{_fmt(imagined.get(task, float('nan')))} |"
        )
    lines.append(
        f"| **mean** | **{_fmt(real['success'])}** | [{_fmt(real['ci_low'])}, {_fmt(real['ci_high'])}] | "
        f"{real['episodes']} | {_fmt(results.get('verify', {}).get('verify/imagined_success', float('nan')))} |"
    )
    sampled = results.get("real_sampled")
    if sampled:
        lines.append(
            f"| sampled (T={sampled['temperature']}) | {_fmt(sampled['success'])} | "
            f"[{_fmt(sampled['ci_low'])}, {_fmt(sampled['ci_high'])}] | {sampled['episodes']} | |"
        )
    v = results.get("verify")
    if v:
        lines += [
            "",
            "## Imagined vs real (same seeds)",
            "",
            "| TP | FP | FN | TN | agreement | imagination gap | reward precision | reward recall |",
            "|---|---|---|---|---|---|---|---|",
            "| " + " | ".join(
                [str(int(v.get(f"verify/{k}", 0))) for k in ("tp", "fp", "fn", "tn")]
                + [_fmt(v.get(k, float("nan"))) for k in (
                    "verify/agreement", "verify/imagination_gap", "verify/reward_precision", "verify/reward_recall")]
            ) + " |",
            "",
            "## World Expert open loop along the real trajectories (PSNR dB; latent MSE)",
            "",
            "| chunk k | world PSNR | copy-first-frame PSNR | world PSNR changed px | copy PSNR changed px | latent MSE |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        k = 1
        while f"verify/world_psnr_chunk{k}" in v:
            lines.append(
                f"| {k} | {_fmt(v[f'verify/world_psnr_chunk{k}'])} | {_fmt(v[f'verify/copy_psnr_chunk{k}'])} | "
                f"{_fmt(v[f'verify/world_psnr_changed_chunk{k}'])} | {_fmt(v[f'verify/copy_psnr_changed_chunk{k}'])} | "
                f"{_fmt(v[f'verify/world_latent_mse_chunk{k}'])} |"
            )
            k += 1
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse_config(EvaluateConfig, "evaluate", default_preset="default")
    out = Path(cfg.output_dir)
    save_config(cfg, out)

    import torch

    from rollout.imagined import ImaginationEngine, freeze_snapshot
    from wlarl.models.wla import WLAPolicy

    policy = WLAPolicy.from_pretrained(cfg.checkpoint).to(cfg.device).eval()
    image_size = cfg.image_size or int(policy.config.image_size)
    chunk = int(policy.config.chunk_size)
    rollout_kwargs = {
        "num_workers": cfg.num_workers,
        "max_episode_steps": cfg.max_episode_steps,
        "timeout_s": cfg.timeout_s,
        "env_kwargs": {"image_size": image_size},
    }
    t0 = time.time()
    results: dict = {"checkpoint": cfg.checkpoint, "seeds": [cfg.seed + e for e in range(cfg.episodes_per_task)]}
    videos: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if cfg.imagination:
            world = WLAPolicy.from_pretrained(cfg.simulator_path).to(cfg.device) if cfg.simulator_path else policy
            world = freeze_snapshot(world)
            horizon = math.ceil(cfg.max_episode_steps / chunk)  # T chunks: the real step budget, in chunks
            scorer, threshold = None, 0.5
            if cfg.reward_model_path:
                from rewards.success_classifier import load_success_classifier

                classifier = load_success_classifier(cfg.reward_model_path, device=cfg.device)
                scorer, threshold = classifier.predict_proba, float(classifier.config.threshold)
            engine = ImaginationEngine(
                world, horizon=horizon, success_threshold=cfg.success_threshold, success_signal=cfg.success_signal,
                success_classifier=scorer, classifier_threshold=threshold, reencode=cfg.reencode_predictions,
            )  # fmt: skip
            paired = paired_verification(
                policy, make_imagine_fn(engine, horizon=horizon), cfg.tasks, cfg.episodes_per_task, seed=cfg.seed,
                world=world, success_scorer=scorer, num_chunks=cfg.world_chunks, num_videos=cfg.num_videos,
                **rollout_kwargs,
            )  # fmt: skip
            real = paired["real"]
            results["verify"] = {k: v for k, v in paired.items() if k.startswith("verify/")}
            imagined, eps = paired.get("imagined_success"), real.episodes
            if imagined is not None:
                results["imagined_per_task"] = {
                    t: success_summary([s for s, ep in zip(imagined, eps) if ep["task_name"] == t])["success"]
                    for t in cfg.tasks
                }
            videos.update(paired["videos"])
            for ep in eps:
                if ep["seed"] - cfg.seed < cfg.num_videos:
                    videos[f"real_{ep['task_name']}_seed{ep['seed']}"] = ep["image"]
        else:
            real = rollout_policy(
                policy,
                cfg.tasks,
                cfg.episodes_per_task,
                seeds=cfg.seed,
                record_video=cfg.num_videos,
                progress=True,
                **rollout_kwargs,
            )
            videos.update({f"real_{k}": v for k, v in real.videos.items()})
        if cfg.sampled_temperature > 0:
            sampled = rollout_policy(
                policy, cfg.tasks, cfg.episodes_per_task, seeds=cfg.seed, sample=True,
                temperature=cfg.sampled_temperature, progress=True, **rollout_kwargs,
            )  # fmt: skip
            results["real_sampled"] = {**sampled.summary(), "temperature": cfg.sampled_temperature}
    summary = real.summary()
    results["real"] = summary
    results["real"]["lost_episodes"] = real.lost
    results["real"]["worker_failures"] = real.worker_failures
    results["real"]["per_episode"] = [o.__dict__ for o in real.outcomes]
    results["metrics"] = real.metrics("eval")
    results["wall_s"] = time.time() - t0
    for name, frames in videos.items():
        write_video(frames, out / "videos" / name)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text(markdown(results))
    logger.info("real success %.3f [%.3f, %.3f] over %d episodes; results in %s",
                summary["success"], summary["ci_low"], summary["ci_high"], summary["episodes"], out)  # fmt: skip
    print(markdown(results))


if __name__ == "__main__":
    main()
