"""Does the policy's first action follow the goal it reads? (BENCHMARKS.md, "Training the probe harder").

    MUJOCO_GL=egl python benchmarks/bench_goal_action.py --policy_paths <policy>/final [<policy>/final ...] \
        --n 300 --out runs/bench_goal_action

On N reset frames of reach-v3 (seeds 20020+: the held-out resets of `bench_goal_learning.py --train_sizes 20`, never
trained on), every policy
acts greedily once; the mean x / y / z of its first action chunk is regressed linearly on (a) the hand position,
(b) the hand and the true goal, (c) the hand and the goal its own backbone state probe reads (`--inputs probe` of
`bench_goal_learning.py`). R² of (b) says how much the action follows the goal; R² of (c) how much it follows what
the backbone carries, right or wrong. The probe's read-out (within 5 cm) is printed beside. Needs a policy trained
with `meta_state_weight` > 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_frame_actions import greedy_chunks  # noqa: E402
from bench_goal_learning import FIRST_SEED, GOAL, probe_goals  # noqa: E402

HAND = slice(0, 3)  # the hand's position in the 39-d full state


def linear_r2(y: np.ndarray, x: np.ndarray) -> float:
    """Share of the variance of y [N, D] that a least-squares affine map of x [N, K] explains."""
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(1 - ((y - design @ coef) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy_paths", nargs="+", required=True)
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--camera", default="corner")
    ap.add_argument("--n", type=int, default=300, help="held-out reset frames (seeds 20020+)")
    ap.add_argument("--radius", type=float, default=0.05)
    ap.add_argument("--out", default="runs/bench_goal_action")
    args = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rollout.collect import state_frames
    from wlarl.models.wla import WLAPolicy

    first = FIRST_SEED + 20
    rows, rendered = [], {}  # frames per image size: the same resets for every policy
    for path in args.policy_paths:
        policy = WLAPolicy.from_pretrained(path).eval()
        size = policy.config.image_size
        if size not in rendered:
            rendered[size] = state_frames(args.task, range(first, first + args.n), size, args.camera)
        f = rendered[size]
        hand, goal = f["full_state"][:, HAND], f["full_state"][:, GOAL]
        a = greedy_chunks(policy, f, args.task)[:, :, :3].mean(1)
        read = probe_goals(policy, f["image"], f["state"], f["instruction"], args.task).numpy()
        rows.append({
            "policy": path, "frames": args.n,
            "r2_hand": linear_r2(a, hand), "r2_hand_goal": linear_r2(a, np.c_[hand, goal]),
            "r2_hand_probe_goal": linear_r2(a, np.c_[hand, read]),
            "probe_within_radius": float((np.linalg.norm(read - goal, axis=1) <= args.radius).mean()),
        })  # fmt: skip
    lines = [
        f"{args.task}, {args.camera}, {args.n} held-out resets (seeds {first}+), greedy first chunk's mean "
        "x/y/z action, linear R².",
        "",
        "| policy | R² from the hand | from hand + true goal | from hand + probe's goal | probe's goal ≤ "
        f"{100 * args.radius:.0f} cm |",
        "|---|---|---|---|---|",
        *[f"| `{r['policy']}` | {r['r2_hand']:.2f} | {r['r2_hand_goal']:.2f} | {r['r2_hand_probe_goal']:.2f} | "
          f"{r['probe_within_radius']:.2f} |" for r in rows],
    ]  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "goal_action.json").write_text(json.dumps(rows, indent=2))
    (out / "goal_action.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
