"""Record the policy's own sampled real episodes as an episode dataset (state rewards, classifiers, refreshes).

Episodes are not stopped at the first success, so they hold the solved states the policy itself reaches, in its own
poses, as well as its failures. The dataset has the schema of `wlarl.data.write_episodes` (`noise_mode` "policy").

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/collect_policy_episodes.py --policy_path runs/sft/final \\
        --output runs/policy_episodes --episodes_per_task 12 --seed 300000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollout.real import rollout_policy  # noqa: E402
from wlarl.data import write_episodes  # noqa: E402
from wlarl.models.wla import WLAPolicy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy_path", required=True)
    p.add_argument("--output", required=True, help="dataset folder to write (must not exist)")
    p.add_argument("--tasks", nargs="*", default=None, help="default: the default preset's evaluation tasks")
    p.add_argument("--episodes_per_task", type=int, default=12)
    p.add_argument("--seed", type=int, default=300_000, help="base reset seed (keep clear of training/eval seeds)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="the mean action instead of sampling (evaluation-like)")
    p.add_argument("--max_episode_steps", type=int, default=150)
    p.add_argument("--camera", default="corner")
    p.add_argument("--num_workers", type=int, default=0, help="env worker processes (0: in this process)")
    args = p.parse_args()
    if Path(args.output).exists():
        raise SystemExit(f"collect_policy_episodes: {args.output} exists; choose a new folder")
    tasks = (
        args.tasks or yaml.safe_load((ROOT / "recipes" / "configs" / "default.yaml").read_text())["evaluate"]["tasks"]
    )
    policy = WLAPolicy.from_pretrained(args.policy_path).eval()
    env_kwargs = {"image_size": int(policy.config.image_size), "camera": args.camera}
    t0 = time.perf_counter()
    res = rollout_policy(
        policy, tasks, args.episodes_per_task, seeds=args.seed, num_workers=args.num_workers,
        max_episode_steps=args.max_episode_steps, stop_on_success=False, sample=not args.greedy, temperature=args.temperature,
        env_kwargs=env_kwargs, timeout_s=6 * 3600,
    )  # fmt: skip
    if res.lost:
        raise SystemExit(f"collect_policy_episodes: {len(res.lost)} episodes were lost: {res.lost[:3]}")
    eps = res.episodes
    solved = sum(bool(e["success"].any()) for e in eps)
    meta = {"source": "collect_policy_episodes", "policy_path": str(args.policy_path), "seed": args.seed, **env_kwargs}
    write_episodes(eps, args.output, meta)
    print(f"{len(eps)} episodes ({solved} reach success) in {time.perf_counter() - t0:.0f} s → {args.output}")


if __name__ == "__main__":
    main()
