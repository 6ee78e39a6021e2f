"""How large and how visible the things a policy must see are, per camera (BENCHMARKS.md, "Small objects").

    MUJOCO_GL=egl python benchmarks/bench_camera.py --cameras corner closeup --image_size 64 --seeds 50 \
        --out runs/bench_camera
    # then the real-success side: the headline's base evaluation of one bootstrap per camera
    MUJOCO_GL=egl python benchmarks/bench_camera.py --cameras corner closeup --seeds 50 \
        --headline corner=runs/headline_s42 closeup=runs/headline_closeup --dataset <bootstrap>/data --out runs/bench_camera

For each task and camera, over `--seeds` seeded resets (seeds 0, 1, ...): where the hand, the object and the goal
of Meta-World's 39-d state project into the frame (`MetaWorldEnv.project`), the share of resets in which each is
inside the frame, and the median number of pixels one centimetre spans there. A 4 cm puck at 1 px/cm is 4 px
across. With `--dataset`, the share of a dataset's frames (every step of the demonstrations) with each point in frame.
With `--headline name=dir`, it adds each headline's greedy real success per task (base and every arm) for
the bootstrap trained on that camera, so the geometry and the success it allows sit in one table.
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

from rollout.sims import resolve_tasks  # noqa: E402

DEFAULT_TASKS = ["reach-v3", "push-v3", "drawer-close-v3", "drawer-open-v3", "button-press-topdown-v3",
                 "door-open-v3", "window-open-v3", "window-close-v3"]  # fmt: skip
# Meta-World's 39-d state: hand xyz, gripper, first object xyz (+ quaternion), second object, previous frame, goal
POINTS = {"hand": slice(0, 3), "object": slice(4, 7), "goal": slice(36, 39)}


def measure(task: str, camera: str, image_size: int, seeds: int) -> dict[str, dict[str, float]]:
    """Share of resets with each point in frame, and the median px/cm at it, for one task and camera."""
    from rollout.sims.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, image_size=image_size, camera=camera)
    pixels = {k: [] for k in POINTS}
    scale = {k: [] for k in POINTS}
    try:
        for seed in range(seeds):
            _, info = env.reset(seed=seed)
            full = info["full_state"]
            for name, sl in POINTS.items():
                px, s = env.project(full[sl])
                pixels[name].append(px)
                scale[name].append(s)
    finally:
        env.close()
    out = {}
    for name in POINTS:
        px = np.asarray(pixels[name])
        inside = np.isfinite(px).all(-1) & (px >= 0).all(-1) & (px < image_size).all(-1)
        out[name] = {"in_frame": float(inside.mean()), "px_per_cm": float(np.nanmedian(scale[name]))}
    return out


def measure_dataset(path: str, cameras: list[str], image_size: int) -> dict[str, dict[str, dict[str, float]]]:
    """Share of a dataset's frames (every step of every episode) with hand, object and goal in frame, per camera.

    The cameras are fixed in the world, so a frame's full state is projected without rebuilding its physical state.
    """
    from rollout.sims.metaworld import MetaWorldEnv
    from wlarl.data.episodes import load_episodes

    table = load_episodes(path).dataset.with_format("arrow")
    full = np.asarray(table["full_state"].to_pylist(), dtype=np.float64)
    tasks = np.asarray(table["task_name"].to_pylist())
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in sorted(set(tasks)):
        rows = full[tasks == task]
        out[task] = {}
        for cam in cameras:
            env = MetaWorldEnv(task, image_size=image_size, camera=cam)
            env.reset(seed=0)
            out[task][cam] = {}
            for name, sl in POINTS.items():
                px, _ = env.project(rows[:, sl])
                inside = np.isfinite(px).all(-1) & (px >= 0).all(-1) & (px < image_size).all(-1)
                out[task][cam][name] = float(inside.mean())
            env.close()
    return out


def _per_task(evaluation: dict) -> dict[str, float]:
    """{task: success} from an evaluation's `eval/<task>/success` entries."""
    return {k.split("/")[1]: float(v) for k, v in evaluation.items()
            if k.startswith("eval/") and k.endswith("/success") and k.count("/") == 2}  # fmt: skip


def headline_success(path: Path) -> dict[str, dict[str, float]]:
    """{row: {task: greedy real success}} of a headline's results.json: the base and every arm's final policy."""
    results = json.loads((path / "results.json").read_text())
    rows = {"base": _per_task(results["base"])}
    for arm, res in results.items():
        if isinstance(res, dict) and "final" in res:
            rows[arm] = _per_task(res["final"])
    return rows


def markdown(geometry: dict, success: dict, image_size: int, seeds: int, frames: dict | None = None) -> str:
    cams = list(next(iter(geometry.values())))
    lines = [
        f"Geometry at {image_size} px over {seeds} seeded resets per task: share of resets with the point in frame, "
        "and median pixels per centimetre at it.",
        "",
        "| task | " + " | ".join(f"{c}: {p} in frame / px per cm" for c in cams for p in POINTS) + " |",
        "|---|" + "---|" * (len(cams) * len(POINTS)),
    ]
    for task, per_cam in geometry.items():
        cells = [f"{per_cam[c][p]['in_frame']:.2f} / {per_cam[c][p]['px_per_cm']:.2f}" for c in cams for p in POINTS]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if frames:
        lines += ["", "Share of the dataset's frames (every step) with the point in frame:", ""]
        lines.append("| task | " + " | ".join(f"{c}: {p}" for c in cams for p in POINTS) + " |")
        lines.append("|---|" + "---|" * (len(cams) * len(POINTS)))
        for task, per_cam in frames.items():
            lines.append(f"| {task} | " + " | ".join(f"{per_cam[c][p]:.3f}" for c in cams for p in POINTS) + " |")
    if success:
        cols = [(name, row) for name, rows in success.items() for row in rows]
        lines += ["", "Greedy real success per task (50 episodes each, the headline's evaluation seeds):", ""]
        lines.append("| task | " + " | ".join(f"{name}: {row}" for name, row in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for task in geometry:
            vals = [success[name][row].get(task) for name, row in cols]
            lines.append(f"| {task} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    p.add_argument("--cameras", nargs="+", default=["corner", "closeup"])
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--headline", nargs="*", default=[], metavar="NAME=DIR", help="headline output dirs to tabulate")
    p.add_argument("--dataset", default=None, help="an episode dataset whose frames to check for points out of frame")
    p.add_argument("--out", default="runs/bench_camera")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be ≥ 1, got {args.seeds}")
    success = {}
    for spec in args.headline:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "results.json").is_file():
            p.error(f"--headline {spec!r}: expected NAME=DIR with DIR/results.json (a finished recipes/headline.py)")
        success[name] = headline_success(Path(path))
    geometry = {
        task: {cam: measure(task, cam, args.image_size, args.seeds) for cam in args.cameras}
        for task in resolve_tasks(args.tasks)
    }
    frames = measure_dataset(args.dataset, args.cameras, args.image_size) if args.dataset else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "image_size": args.image_size,
        "seeds": args.seeds,
        "geometry": geometry,
        "frames": frames,
        "success": success,
    }
    (out / "bench_camera.json").write_text(json.dumps(result, indent=2))
    text = markdown(geometry, success, args.image_size, args.seeds, frames)
    (out / "bench_camera.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
