"""Throughput of the real engine: env steps per second of GRPO rollouts in the real simulator, in one run.

    MUJOCO_GL=egl python benchmarks/bench_real_engine.py --policy_path <bootstrap>/policy/final

For every (workers, slots per worker) setting, one `EnvWorkerPool` is started (its start-up is timed apart), warmed by
one rollout call, then `--repeats` calls of `RealEngine.rollout` run B = `--starts` seeded reset starts (one per task,
cycling through the 8 default tasks) × G = `--group` samples for up to `--max_episode_steps` env steps each, as a GRPO
step of the real engine does. Reports per call: wall seconds, env steps/s, and the split into policy calls and
simulation (workers stepping, rendering and transfer). Prints markdown; writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_pool import DEFAULT_TASKS  # the 8 tasks of the default preset (benchmarks/ is on the path of a script)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy_path", required=True)
    ap.add_argument("--settings", nargs="+", default=["1x1", "2x1", "1x16", "2x16"],
                    help="workers x slots per worker")  # fmt: skip
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max_episode_steps", type=int, default=144)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out", default="runs/bench_real_engine.json")
    args = ap.parse_args()

    import torch

    from rollout.imagined import freeze_snapshot
    from rollout.real import EnvWorkerPool, reset_start_states
    from rollout.real_engine import RealEngine
    from wlarl.models.wla import WLAPolicy
    from wlarl.types import Observation

    torch.manual_seed(0)
    policy = WLAPolicy.from_pretrained(args.policy_path).eval()
    world = freeze_snapshot(policy)
    env_kwargs = {"image_size": int(policy.config.image_size)}
    tasks = [DEFAULT_TASKS[b % len(DEFAULT_TASKS)] for b in range(args.starts)]
    starts = [reset_start_states([t], 1, seed=100_000 + b, env_kwargs=env_kwargs)[0] for b, t in enumerate(tasks)]
    obs = Observation.from_dicts(starts)
    seeds = torch.tensor([s["seed"] for s in starts])
    results = []
    for setting in args.settings:
        workers, slots = (int(x) for x in setting.split("x"))
        t0 = time.perf_counter()
        with EnvWorkerPool(workers, env_kwargs=env_kwargs, slots_per_worker=slots) as pool:
            engine = RealEngine(world, max_episode_steps=args.max_episode_steps, pool=pool, env_kwargs=env_kwargs)
            engine.rollout(policy, obs, group_size=args.group, temperature=args.temperature, seeds=seeds)  # warm-up
            warm_s = time.perf_counter() - t0
            calls = []
            for _ in range(args.repeats):
                t1 = time.perf_counter()
                traj = engine.rollout(policy, obs, group_size=args.group, temperature=args.temperature, seeds=seeds)
                wall = time.perf_counter() - t1
                steps = int(traj.env_steps.sum())
                calls.append(
                    {
                        "wall_s": wall,
                        "env_steps": steps,
                        "env_steps_per_s": steps / wall,
                        "policy_s": engine.last_timing["policy"],
                        "simulate_s": engine.last_timing["simulate"],
                        "assemble_s": engine.last_timing["assemble"],
                        "success": float(traj.success.float().mean()),
                    }
                )
        results.append({"workers": workers, "slots": slots, "start_and_warmup_s": warm_s, "calls": calls})
        med = {k: statistics.median(c[k] for c in calls) for k in calls[0]}
        print(f"{setting}: {med['env_steps_per_s']:.0f} env steps/s ({med['env_steps']} steps in {med['wall_s']:.1f} s;"
              f" policy {med['policy_s']:.1f} s, simulate {med['simulate_s']:.1f} s)", flush=True)  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    rows = args.starts * args.group
    print(
        f"\n{rows} real episodes per call ({args.starts} starts × {args.group}), up to {args.max_episode_steps} steps"
    )
    print("| workers × slots | wall s | env steps | env steps/s | policy s | simulate s | start + warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        med = {k: statistics.median(c[k] for c in r["calls"]) for k in r["calls"][0]}
        print(f"| {r['workers']} × {r['slots']} | {med['wall_s']:.1f} | {med['env_steps']:.0f} | "
              f"{med['env_steps_per_s']:.0f} | {med['policy_s']:.1f} | {med['simulate_s']:.1f} | "
              f"{r['start_and_warmup_s']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
