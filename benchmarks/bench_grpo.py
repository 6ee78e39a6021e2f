"""GRPO in imagination: imagined vs real env-steps/s, one step's time split, and 2- vs 1-process throughput.

    MUJOCO_GL=egl python benchmarks/bench_grpo.py --policy_path P --dataset_path D [--reward_model_path R]

P, D and R are what `accelerate launch recipes/grpo_world.py` bootstraps (see `~/.cache/wlarl/bootstrap/*/paths.json`);
`--paths_json` reads all three from such a file. Prints a markdown report and writes it to `--out` (JSON too).
All ratios come from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_everything(args):
    from rewards import build_reward_scorer
    from rollout.imagined import ImaginationEngine, freeze_snapshot
    from wlarl.data import load_episodes, start_states
    from wlarl.models.wla import WLAPolicy

    policy = WLAPolicy.from_pretrained(args.policy_path)
    episodes = load_episodes(args.dataset_path)
    starts = start_states(episodes)
    if args.tasks:
        starts = [s for s in starts if s["task_name"] in set(args.tasks)]
    snapshot = freeze_snapshot(policy)
    engine = ImaginationEngine(snapshot, horizon=args.horizon)
    funcs = ["subgoal_success", "shaping"] if args.reward_model_path else ["predicted_success", "shaping"]
    scorer = build_reward_scorer(
        funcs, [1.0, 0.05], reward_model_path=args.reward_model_path, dataset_path=args.dataset_path, policy=snapshot
    )
    return policy, starts, engine, scorer


def bench_imagined_vs_real(args, policy, starts, engine) -> dict:
    """Imagined env-steps/s in three decoding modes, and the real simulator's, in one run.

    The headline ("lazy + final frames") imagines with lazy decoding and then decodes the frame each row ended on,
    which is what the default reward (`subgoal_success`, mode final) reads; "eager" decodes every chunk;
    "latents only" decodes nothing (rewards on latents such as goal_similarity).
    """
    from rewards.base import last_alive_index
    from rollout.sims import make_env
    from wlarl.types import Observation

    B = args.num_starts
    obs = Observation.from_dicts([starts[i % len(starts)] for i in range(B)])
    policy.eval()
    engine.rollout(policy, obs, group_size=args.num_generations, horizon=1)  # warm-up

    def lazy_final():
        traj = engine.rollout(policy, obs, group_size=args.num_generations)
        traj.subgoal_images[torch.arange(traj.num_rows), last_alive_index(traj.alive)]
        return traj

    def eager():
        engine.decode_images = "eager"
        try:
            return engine.rollout(policy, obs, group_size=args.num_generations)
        finally:
            engine.decode_images = "lazy"

    def latents_only():
        return engine.rollout(policy, obs, group_size=args.num_generations)

    modes = {"lazy_final": lazy_final, "eager": eager, "latents_only": latents_only}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):  # interleaved so that load drifts hit every mode alike
        for m, fn in modes.items():
            t0 = time.perf_counter()
            traj = fn()
            times[m].append(time.perf_counter() - t0)
    H = traj.samples[0].actions.shape[1]
    imagined_steps = traj.num_rows * traj.horizon * H
    rates = {m: imagined_steps / statistics.median(ts) for m, ts in times.items()}

    task = starts[0]["task_name"]
    env = make_env(task, image_size=args.image_size)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n = args.real_steps
    t0 = time.perf_counter()
    for _ in range(n):
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        if term or trunc:
            env.reset()
    real_rate = n / (time.perf_counter() - t0)
    env.close()
    return {
        "rows": traj.num_rows, "chunks": traj.horizon, "chunk_size": H,
        "imagined_env_steps_per_s": rates["lazy_final"], "real_env_steps_per_s": real_rate,
        "ratio": rates["lazy_final"] / real_rate, "real_task": task,
        "eager_env_steps_per_s": rates["eager"], "ratio_eager": rates["eager"] / real_rate,
        "latents_only_env_steps_per_s": rates["latents_only"], "ratio_latents_only": rates["latents_only"] / real_rate,
    }  # fmt: skip


def bench_step_split(args, policy, starts, engine, scorer, output_dir: str) -> dict:
    from wlarl.configs import GRPOWorldConfig
    from wlarl.trainer import GRPOWorldTrainer

    cfg = GRPOWorldConfig(
        output_dir=output_dir, max_steps=args.steps, num_starts=args.num_starts, num_generations=args.num_generations,
        horizon=args.horizon, dynamic_sampling=False, save_strategy="no", report_to="none", learning_rate=1e-5,
        log_image_steps=0, eval_steps=None, verify_steps=0, use_cpu=True,
    )  # fmt: skip
    trainer = GRPOWorldTrainer(
        model=policy.train(), args=cfg, train_dataset=starts, imagination=engine, reward_scorer=scorer
    )
    trainer.train()
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl")) if "time/step" in line]
    rows = rows[1:] or rows  # skip the warm-up step
    keys = ["time/imagine", "time/rewards", "time/update_forward", "time/step"]
    out = {k: statistics.median(r[k] for r in rows) for k in keys}
    out["time/update_backward_and_rest"] = (
        out["time/step"] - out["time/update_forward"] - out["time/imagine"] - out["time/rewards"]
    )
    out["rows"] = args.num_starts * args.num_generations
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_processes(args) -> dict:
    """Rows imagined and trained per second with 1 and with 2 processes (same per-process batch)."""
    results = {}
    for nproc, accel in ((1, "cpu_1proc.yaml"), (2, "cpu_2proc.yaml")):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable, "-m", "accelerate.commands.launch",
                "--config_file", str(ROOT / "recipes/configs/accelerate_configs" / accel),
                "--main_process_port", str(free_port()), str(Path(__file__).resolve()), "--worker", tmp,
                "--policy_path", args.policy_path, "--dataset_path", args.dataset_path,
                "--num_starts", str(args.num_starts), "--num_generations", str(args.num_generations),
                "--horizon", str(args.horizon), "--steps", str(args.steps),
            ]  # fmt: skip
            if args.tasks:
                cmd += ["--tasks", *args.tasks]
            if args.reward_model_path:
                cmd += ["--reward_model_path", args.reward_model_path]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // nproc))}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            rec = json.loads((Path(tmp) / "throughput.json").read_text())
        results[nproc] = rec
    return {
        "1proc_rows_per_s": results[1]["rows_per_s"], "2proc_rows_per_s": results[2]["rows_per_s"],
        "ratio_2_over_1": results[2]["rows_per_s"] / results[1]["rows_per_s"],
    }  # fmt: skip


def worker(args) -> None:
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    policy, starts, engine, scorer = load_everything(args)
    out = args.worker
    split = bench_step_split(args, policy, starts, engine, scorer, os.path.join(out, "run"))
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        rows = split["rows"] * state.num_processes
        (Path(out) / "throughput.json").write_text(
            json.dumps({"rows_per_s": rows / split["time/step"], "world_size": state.num_processes, **split})
        )
    if state.num_processes > 1:
        from wlarl.utils.distributed import exit_without_teardown

        state.destroy_process_group()
        exit_without_teardown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy_path")
    p.add_argument("--dataset_path")
    p.add_argument("--reward_model_path")
    p.add_argument("--paths_json", help="paths.json of a bootstrap cache entry")
    p.add_argument("--tasks", nargs="*", default=None, help="only start states of these tasks")
    p.add_argument("--num_starts", type=int, default=8)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--real_steps", type=int, default=500)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--skip_processes", action="store_true")
    p.add_argument("--out", default="runs/bench_grpo.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.paths_json:
        paths = json.loads(Path(args.paths_json).read_text())
        args.policy_path = args.policy_path or paths["policy_path"]
        args.dataset_path = args.dataset_path or paths["dataset_path"]
        args.reward_model_path = args.reward_model_path or paths.get("reward_model_path")
    if not args.policy_path or not args.dataset_path:
        p.error("give --policy_path and --dataset_path (or --paths_json)")
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(2)
    policy, starts, engine, scorer = load_everything(args)
    report = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}"}
    report["imagined_vs_real"] = bench_imagined_vs_real(args, policy, starts, engine)
    with tempfile.TemporaryDirectory() as tmp:
        report["step_split"] = bench_step_split(args, policy, starts, engine, scorer, tmp)
    if not args.skip_processes:
        report["processes"] = bench_processes(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    iv, sp = report["imagined_vs_real"], report["step_split"]
    print(
        f"| imagined env-steps/s (N={iv['rows']}, T={iv['chunks']}, H={iv['chunk_size']}) | {iv['imagined_env_steps_per_s']:.0f} |"
    )
    print(f"| real env-steps/s ({iv['real_task']}, 64 px) | {iv['real_env_steps_per_s']:.0f} |")
    print(f"| ratio (lazy decoding + the final frame of each row decoded) | {iv['ratio']:.1f}× |")
    print(f"| ratio (every chunk decoded) | {iv['ratio_eager']:.1f}× |")
    print(f"| ratio (latents only, nothing decoded) | {iv['ratio_latents_only']:.1f}× |")
    for k in ("time/imagine", "time/rewards", "time/update_forward", "time/update_backward_and_rest", "time/step"):
        print(f"| {k} (B·G={sp['rows']}) | {sp[k]:.2f} s |")
    if "processes" in report:
        pr = report["processes"]
        print(f"| rows/s 1 process | {pr['1proc_rows_per_s']:.1f} |")
        print(f"| rows/s 2 processes | {pr['2proc_rows_per_s']:.1f} |")
        print(f"| 2-process ÷ 1-process | {pr['ratio_2_over_1']:.2f} |")


if __name__ == "__main__":
    main()
