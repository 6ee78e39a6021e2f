"""What the policy sees in imagination: raw World-Expert latents vs encode(decode(prediction)), and bounded actions.

    MUJOCO_GL=egl python benchmarks/bench_imagination_inputs.py --paths_json ~/.cache/wlarl/bootstrap/<key>/paths.json

For B start states × G samples, imagination runs with `reencode=True` (the policy reads encoder latents of the
predicted frames, as it reads encoder latents of real frames). At every chunk t ≥ 1 the same policy is also asked for
its action distribution on the raw predicted latent of the same scene; the report gives, per chunk, the KL between
the two Gaussian action distributions (same learned std: KL = Σ (μ_raw − μ_reenc)² / 2σ²), the mean absolute
difference of the mean chunks (env units), and how often the greedy subtask differs. It also reports the share of
sampled action elements outside [-1, 1] (what the World Expert executed unclipped before actions were bounded).
Prints a markdown table and writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths_json", required=True, help="paths.json of a bootstrap (policy_path, dataset_path)")
    ap.add_argument("--num_starts", type=int, default=16)
    ap.add_argument("--num_generations", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_imagination_inputs.json")
    args = ap.parse_args()

    from rollout.imagined import ImaginationEngine, freeze_snapshot
    from wlarl.data import load_episodes, start_states
    from wlarl.models.wla import WLAPolicy
    from wlarl.types import Observation

    paths = json.loads(Path(args.paths_json).expanduser().read_text())
    policy = WLAPolicy.from_pretrained(paths["policy_path"]).eval()
    starts = start_states(load_episodes(paths["dataset_path"]))
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(starts), generator=gen)[: args.num_starts].tolist()
    obs0 = Observation.from_dicts([starts[i] for i in idx])
    engine = ImaginationEngine(freeze_snapshot(policy), horizon=args.horizon, reencode=True)
    t0 = time.perf_counter()
    traj = engine.rollout(policy, obs0, group_size=args.num_generations, temperature=args.temperature, generator=gen)
    seconds = time.perf_counter() - t0
    std = policy.action_expert.std().detach() * args.temperature  # [H, A]
    rows = []
    with torch.no_grad():
        for t in range(1, traj.horizon):
            seen = traj.observations[t]  # re-encoded predicted frame
            raw = replace(seen, latents=traj.subgoal_latents[:, t - 1])  # the World Expert's own latent
            a = policy.act(seen, sample=False)
            b = policy.act(raw, sample=False)
            kl = ((a.extras["mean"] - b.extras["mean"]) ** 2 / (2 * std**2)).flatten(1).sum(1)  # [N]
            alive = traj.alive[:, t]
            rows.append(
                {
                    "chunk": t,
                    "kl_mean": float(kl.mean()),
                    "kl_median": float(kl.median()),
                    "kl_alive_mean": float(kl[alive].mean()) if alive.any() else float("nan"),
                    "mean_abs_diff": float((a.extras["mean"] - b.extras["mean"]).abs().mean()),
                    "subtask_differs": float(sum(x != y for x, y in zip(a.subtask_text, b.subtask_text)) / len(kl)),
                    "latent_mse": float(((seen.latents - raw.latents) ** 2).mean()),
                }
            )
    clip_frac = float((traj.sampled_actions.abs() > 1.0).float().mean())
    report = {
        "command": "python benchmarks/bench_imagination_inputs.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "rows": args.num_starts * args.num_generations,
        "rollout_seconds": seconds,
        "sampled_elements_outside_bounds": clip_frac,
        "action_std_mean": float(std.mean()),
        "per_chunk": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"N = {report['rows']} rows; sampled action elements outside [-1, 1]: {clip_frac:.3f}; std {std.mean():.3f}")
    print("| chunk | KL(reencoded ‖ raw), mean | median | mean |Δμ| | subtask differs | latent MSE |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['chunk']} | {r['kl_mean']:.3f} | {r['kl_median']:.3f} | {r['mean_abs_diff']:.3f} | "
            f"{r['subtask_differs']:.2f} | {r['latent_mse']:.4f} |"
        )


if __name__ == "__main__":
    main()
