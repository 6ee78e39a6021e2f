"""Simulator and demonstration benchmarks (results go in BENCHMARKS.md, "Simulator and demonstrations").

    MUJOCO_GL=egl python benchmarks/bench_env.py                       # everything, MT10
    MUJOCO_GL=egl python benchmarks/bench_env.py --only speed --steps 3000
    MUJOCO_GL=egl python benchmarks/bench_env.py --only experts --episodes 10

Measures:
1. env steps/s with 64 px rendering (camera `corner`, random actions, resets on truncation), with 1 and 2 worker
   processes running side by side (per-process and total rate);
2. clean scripted-expert success per MT10 task (episodes end at `max_episode_steps`);
3. success rate and episode length of each noise mode (the `CollectConfig` defaults), per task and overall.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from rollout.collect import CollectConfig  # noqa: E402
from rollout.sims import resolve_tasks  # noqa: E402


def _speed_worker(args: tuple[str, int, int, int]) -> dict:
    task, steps, image_size, seed = args
    from rollout.sims import make_env

    env = make_env(task, image_size=image_size, max_episode_steps=150)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(20):  # warm-up: renderer and caches
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    env.reset(seed=seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        if terminated or truncated:
            env.reset()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    # steps per CPU-second is what one process reaches on an idle core; wall-clock rates drop on a shared machine.
    return {
        "task": task,
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "steps_per_cpu_s": steps / cpu_seconds,
    }


def bench_speed(tasks: list[str], steps: int, image_size: int) -> list[dict]:
    rows = []
    ctx = mp.get_context("spawn")
    for n in (1, 2):
        with ctx.Pool(n) as pool:
            res = pool.map(_speed_worker, [(tasks[i % len(tasks)], steps, image_size, i) for i in range(n)])
        per = [r["steps_per_s"] for r in res]
        per_cpu = [r["steps_per_cpu_s"] for r in res]
        rows.append(
            {
                "processes": n,
                "tasks": [r["task"] for r in res],
                "per_process_steps_per_s": per,
                "per_process_steps_per_cpu_s": per_cpu,
                "total_steps_per_s": float(sum(per)),
                "load_average_1min": os.getloadavg()[0],
            }
        )
        print(
            f"[speed] {n} process(es): per process {[round(p) for p in per]} steps/s wall "
            f"({[round(p) for p in per_cpu]} per CPU-second), total {sum(per):.0f} steps/s; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    return rows


def _episode_worker(job: dict) -> dict:
    from rollout.experts import NoiseSpec, ScriptedExpert, run_episode
    from rollout.sims import make_env

    warnings.filterwarnings("ignore")
    env = make_env(job["task"], render_images=False, max_episode_steps=job["max_episode_steps"])
    expert = ScriptedExpert(job["task"], NoiseSpec(**job["noise"]))
    out = []
    for seed in job["seeds"]:
        ep = run_episode(env, expert, seed=seed, steps_after_success=0)
        out.append({"success": bool(ep["success"].any()), "length": len(ep["action"])})
    env.close()
    return {"task": job["task"], "mode": job["noise"]["mode"], "episodes": out}


def bench_experts(
    tasks: list[str], episodes: int, max_episode_steps: int, workers: int, modes: list[str] | None = None
) -> dict:
    cfg = CollectConfig(tasks=tasks)
    if modes:
        cfg = CollectConfig(tasks=tasks, noise_modes=modes, noise_weights=[1.0] * len(modes))
    jobs = [
        {
            "task": task,
            "noise": asdict(cfg.noise_spec(mode)),
            "seeds": list(range(1000, 1000 + episodes)),
            "max_episode_steps": max_episode_steps,
        }
        for mode in cfg.noise_modes
        for task in tasks
    ]
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_episode_worker, jobs)
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        succ = [e["success"] for e in r["episodes"]]
        lens = [e["length"] for e in r["episodes"]]
        table.setdefault(r["mode"], {})[r["task"]] = {
            "success_rate": float(np.mean(succ)),
            "mean_length": float(np.mean(lens)),
        }
    for per_task in table.values():
        per_task["all"] = {
            "success_rate": float(np.mean([v["success_rate"] for k, v in per_task.items() if k != "all"])),
            "mean_length": float(np.mean([v["mean_length"] for k, v in per_task.items() if k != "all"])),
        }
    return {"noise": {m: asdict(cfg.noise_spec(m)) for m in cfg.noise_modes}, "table": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="MT10", help="task set or comma-separated task names")
    p.add_argument("--only", choices=["speed", "experts"], default=None)
    p.add_argument("--steps", type=int, default=3000, help="env steps per process in the speed test")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and noise mode")
    p.add_argument("--max_episode_steps", type=int, default=150)
    p.add_argument("--workers", type=int, default=2, help="processes for the expert runs")
    p.add_argument("--modes", default="", help="comma-separated noise modes (default: the CollectConfig mix)")
    p.add_argument("--output", default="runs/bench_env.json")
    args = p.parse_args()
    tasks = resolve_tasks(args.tasks)
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "args": vars(args),
    }
    if args.only in (None, "speed"):
        result["speed"] = bench_speed(["push-v3", "drawer-close-v3"], args.steps, args.image_size)
    if args.only in (None, "experts"):
        start = time.time()
        result["experts"] = bench_experts(
            tasks, args.episodes, args.max_episode_steps, args.workers, [m for m in args.modes.split(",") if m]
        )
        table = result["experts"]["table"]
        modes = list(table)
        print(f"[experts] {args.episodes} episodes per task and mode, max {args.max_episode_steps} steps")
        print("| task | " + " | ".join(modes) + " |")
        print("|---|" + "---|" * len(modes))
        for task in [*tasks, "all"]:
            cells = [f"{table[m][task]['success_rate']:.2f} ({table[m][task]['mean_length']:.0f})" for m in modes]
            print(f"| {task} | " + " | ".join(cells) + " |")
        print(f"[experts] {time.time() - start:.0f} s")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
