"""How well can any policy locate a task's goal from where its marker falls in the frame? (BENCHMARKS.md,
"What the camera lets any policy reach").

    MUJOCO_GL=egl python benchmarks/bench_observability.py --tasks reach-v3 push-v3 --cameras corner closeup \
        --image_sizes 64 96 --resets 6000 --out runs/bench_observability

A goal marker is a 3-D point, its image a 2-D one: one depth along the camera ray is lost. Where the goal lies on a
plane (push: on the table) the ray meets the plane once and the pixel gives the goal; where it floats in a 3-D box
(reach: 20 × 10 × 25 cm in the air) every point of the ray inside the box is possible. This benchmark measures the
best success a policy can have that chooses where to put the hand (or the object) from the marker's pixel, with
perfect control otherwise:

1. `--resets` seeded resets per task give goals from the task's own distribution; the goal is projected into the frame
   of each camera and image size (`MetaWorldEnv.project`), as a continuous position and as the pixel it falls in.
2. A fifth of them is held out. For each held-out goal the `--neighbours` reference goals with the nearest marker
   position are the goals consistent with what the frame shows; the estimate is the one of them with the most others
   within the success radius (the mode: the point that maximises the chance of success given the pixel).
3. Success = the estimate within the task's success radius (reach 5 cm, push 5 cm) of the true goal.

Rows: `pixel` (the marker's pixel at that image size), `subpixel` (its exact continuous position: what an ideal
reader of the frame could do), and `blind` (one point for every goal, the prior's mode: a goal-blind policy).
Not counted: cues from the marker's apparent size (1–3 px here), from the hand occluding it, or from shadows (the
renderer draws none). The numbers bound what reading the marker's position can give, not every policy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

SUCCESS_RADIUS = {"reach-v3": 0.05, "push-v3": 0.05}  # Meta-World v3: reach_dist ≤ 0.05, push TARGET_RADIUS
GOAL = slice(36, 39)  # the goal in Meta-World's 39-d state


def sample_goals(task: str, resets: int) -> np.ndarray:
    """float [resets, 3]: the goal of seeded resets 0 … resets-1."""
    from rollout.sims.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, image_size=16, render_images=False)
    try:
        return np.stack([env.reset(seed=s)[1]["full_state"][GOAL] for s in range(resets)]).astype(np.float64)
    finally:
        env.close()


def project(task: str, camera: str, image_size: int, goals: np.ndarray) -> np.ndarray:
    """float [N, 2]: (column, row) of each goal in the upright frame of that camera and size."""
    from rollout.sims.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, image_size=image_size, camera=camera)
    try:
        env.reset(seed=0)
        pixels, _ = env.project(goals)
    finally:
        env.close()
    if not np.isfinite(pixels).all():
        raise RuntimeError(f"{task}/{camera}: a goal projected behind the camera")
    return pixels


def mode_estimates(keys_ref: np.ndarray, goals_ref: np.ndarray, keys_test: np.ndarray, k: int, radius: float):
    """For each test key: among the k reference goals with the nearest keys, the one with most others within radius.

    Args:
        keys_ref, keys_test: float [R, D], [T, D] what the policy sees (marker position; D = 0 for a blind policy).
        goals_ref: float [R, 3] the goals behind keys_ref.
        k: neighbours that stand for "the goals consistent with this key".
        radius: success radius in metres.

    Returns:
        float [T, 3]: the estimates.
    """

    def mode(cand: np.ndarray) -> np.ndarray:
        within = (np.linalg.norm(cand[:, None] - cand[None], axis=-1) <= radius).sum(1)
        return cand[int(np.argmax(within))]

    if keys_ref.shape[1] == 0:  # blind: every goal is consistent, one estimate for all (from ≤ 2,000 of them)
        return np.repeat(mode(goals_ref[:2000])[None], len(keys_test), axis=0)
    out = np.empty((len(keys_test), 3))
    for i, key in enumerate(keys_test):
        d = np.linalg.norm(keys_ref - key, axis=1)
        # ties (many goals in the same pixel) are all consistent: keep every one at the k-th distance
        out[i] = mode(goals_ref[d <= np.partition(d, k - 1)[k - 1]])
    return out


def measure(goals: np.ndarray, pixels: np.ndarray, radius: float, k: int, test_fraction: float = 0.2) -> dict:
    """Success of the pixel, subpixel and blind estimators on the held-out goals, with the consistent segment."""
    n_test = max(1, int(round(test_fraction * len(goals))))
    ref, test = slice(n_test, None), slice(0, n_test)
    views = {"pixel": np.floor(pixels), "subpixel": pixels, "blind": np.zeros((len(goals), 0))}
    out = {}
    for name, keys in views.items():
        est = mode_estimates(keys[ref], goals[ref], keys[test], k, radius)
        ok = np.linalg.norm(est - goals[test], axis=1) <= radius
        out[name] = float(ok.mean())
    # how far apart the goals consistent with one marker position lie: the spread along their main axis
    spreads = []
    for key in pixels[test][:200]:
        d = np.linalg.norm(pixels[ref] - key, axis=1)
        near = goals[ref][np.argsort(d)[:k]]
        spreads.append(float(np.ptp((near - near.mean(0)) @ np.linalg.svd(near - near.mean(0))[2][0])))
    out["consistent_extent_cm"] = 100 * float(np.median(spreads))
    out["test_goals"] = n_test
    return out


def markdown(results: dict, resets: int, k: int) -> str:
    lines = [
        f"Goals of {resets} seeded resets per task, a fifth held out; {k} nearest marker positions per estimate.",
        "",
        "| task | camera | image px | success: marker's pixel | exact marker position | goal-blind | goals consistent "
        "with one position span (cm, median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, per_cam in results.items():
        for key, r in per_cam.items():
            cam, size = key.split("@")
            lines.append(
                f"| {task} | {cam} | {size} | {r['pixel']:.2f} | {r['subpixel']:.2f} | {r['blind']:.2f} | "
                f"{r['consistent_extent_cm']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    ap.add_argument("--cameras", nargs="+", default=["corner"])
    ap.add_argument("--image_sizes", nargs="+", type=int, default=[64])
    ap.add_argument("--resets", type=int, default=6000)
    ap.add_argument("--neighbours", type=int, default=40)
    ap.add_argument("--out", default="runs/bench_observability")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.tasks) - set(SUCCESS_RADIUS))
    if unknown:
        raise SystemExit(f"--tasks: no success radius known for {unknown}; expected some of {sorted(SUCCESS_RADIUS)}")
    if args.resets < 10 * args.neighbours:
        raise SystemExit(f"--resets {args.resets}: need at least 10 × --neighbours ({10 * args.neighbours})")
    results: dict[str, dict[str, dict]] = {}
    for task in args.tasks:
        goals = sample_goals(task, args.resets)
        results[task] = {}
        for cam in args.cameras:
            for size in args.image_sizes:
                pixels = project(task, cam, size, goals)
                results[task][f"{cam}@{size}"] = measure(goals, pixels, SUCCESS_RADIUS[task], args.neighbours)
                print(task, cam, size, results[task][f"{cam}@{size}"], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "observability.json").write_text(json.dumps(results, indent=2))
    (out / "observability.md").write_text(markdown(results, args.resets, args.neighbours))
    print(markdown(results, args.resets, args.neighbours))
    return results


if __name__ == "__main__":
    main()
