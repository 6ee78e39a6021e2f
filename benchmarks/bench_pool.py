"""Real evaluation with fresh simulator workers per call vs one persistent `EnvWorkerPool`, in one run.

    MUJOCO_GL=egl python benchmarks/bench_pool.py --policy_path <bootstrap>/policy/final [--episodes_per_task 10]

Runs the same seeded greedy evaluation (`rollout_policy`, 8 default tasks) `--repeats` times with `num_workers`
spawned anew at every call (how evaluation ran before the pool), then `--repeats` times on one pool started before the
first call (how a training run's evaluations, verifications and refreshes share it now), then on a pool whose workers
run `--slots` episodes each at once (one batched policy call per chunk for all of them). Reports wall seconds per call
and checks that all give the same successes. Prints markdown; writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

DEFAULT_TASKS = [
    "reach-v3", "push-v3", "drawer-close-v3", "drawer-open-v3", "button-press-topdown-v3", "door-open-v3",
    "window-open-v3", "window-close-v3",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy_path", required=True)
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--episodes_per_task", type=int, default=10)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="runs/bench_pool.json")
    args = ap.parse_args()

    from rollout.real import EnvWorkerPool, rollout_policy
    from wlarl.models.wla import WLAPolicy

    policy = WLAPolicy.from_pretrained(args.policy_path).eval()
    env_kwargs = {"image_size": int(policy.config.image_size)}
    common = dict(seeds=args.seed, max_episode_steps=150, env_kwargs=env_kwargs, keep_episodes=False)
    res: dict = {"args": vars(args), "fresh_s": [], "pool_s": [], "fresh_success": [], "pool_success": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = rollout_policy(policy, args.tasks, args.episodes_per_task, num_workers=args.num_workers, **common)
        res["fresh_s"].append(time.perf_counter() - t0)
        res["fresh_success"].append(out.summary()["success"])
    t0 = time.perf_counter()
    with EnvWorkerPool(args.num_workers, env_kwargs=env_kwargs) as pool:
        for _ in range(args.repeats):
            t1 = time.perf_counter()
            out = rollout_policy(policy, args.tasks, args.episodes_per_task, pool=pool, **common)
            res["pool_s"].append(time.perf_counter() - t1)
            res["pool_success"].append(out.summary()["success"])
        res["pool_workers_started"] = pool.started
    res["pool_total_s"] = time.perf_counter() - t0
    res["slots_s"], res["slots_success"] = [], []
    with EnvWorkerPool(args.num_workers, env_kwargs=env_kwargs, slots_per_worker=args.slots) as pool:
        for _ in range(args.repeats):
            t1 = time.perf_counter()
            out = rollout_policy(policy, args.tasks, args.episodes_per_task, pool=pool, **common)
            res["slots_s"].append(time.perf_counter() - t1)
            res["slots_success"].append(out.summary()["success"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    n = len(args.tasks) * args.episodes_per_task
    print(f"{n} greedy episodes per call, {args.num_workers} workers, {args.repeats} calls each")
    print("| | wall s per call | median | real success |")
    print("|---|---|---|---|")
    print(f"| fresh workers every call | {', '.join(f'{s:.1f}' for s in res['fresh_s'])} | "
          f"{statistics.median(res['fresh_s']):.1f} | {res['fresh_success']} |")  # fmt: skip
    print(f"| one persistent pool | {', '.join(f'{s:.1f}' for s in res['pool_s'])} | "
          f"{statistics.median(res['pool_s']):.1f} | {res['pool_success']} |")  # fmt: skip
    print(f"| one pool, {args.slots} episodes per worker at once | {', '.join(f'{s:.1f}' for s in res['slots_s'])} | "
          f"{statistics.median(res['slots_s']):.1f} | {res['slots_success']} |")  # fmt: skip
    print(f"pool: {res['pool_workers_started']} worker processes started for {args.repeats} calls")


if __name__ == "__main__":
    main()
