"""Does the policy see small objects? Its image latents and its greedy behaviour on reach and push
(BENCHMARKS.md, "Small objects").

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/collect_policy_episodes.py --policy_path <b>/policy/final \
        --output runs/goal_eps --tasks reach-v3 push-v3 --episodes_per_task 50 --seed 42 --greedy [--camera closeup]
    MUJOCO_GL=egl python benchmarks/bench_goal_reading.py --policy_path <b>/policy/final --episodes runs/goal_eps \
        --out runs/goal_reading

Two measurements:

1. **Latents.** Reset frames of reach-v3 and push-v3 (seeds 42, 43, ...) go through the policy's image tokenizer
   (encode, decode). The mean absolute error (0-255) inside a 3 x 3 patch at the projected goal and object
   (`MetaWorldEnv.project`) is compared with the frame's; a marker the latents drop shows up as a patch error many
   times the frame's. `recon.png` shows the frames above their reconstructions. The decoder may blur what the
   latents still hold, so a ridge regression from the frozen latents to the goal's and the object's x, y (200
   reset frames of seeds 1000+, 150 fit, 50 scored) says whether the latents keep them: held-out R² per axis.
2. **Behaviour.** In the policy's episodes (`benchmarks/collect_policy_episodes.py --greedy`), the final hand (reach)
   or object (push) position is compared with the goal: the correlation with the goal per axis, the median distance
   to the goal, and the same for a goal-blind policy that always ends at the mean final position. A policy that reads
   the goal ends nearer than the goal-blind one, and its final x, y follow the goal's. For push, the median closest
   approach of the hand to the puck says whether it finds the puck at all.
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
import torch  # noqa: E402

GOAL, OBJECT, HAND = slice(36, 39), slice(4, 7), slice(0, 3)
ENDPOINT = {"reach-v3": HAND, "push-v3": OBJECT}


def patch_error(frame: np.ndarray, recon: np.ndarray, pixel: np.ndarray, r: int = 1) -> float:
    """Mean absolute error (0-255) in the (2r+1)² patch around `pixel` (column, row), clipped to the frame."""
    s = frame.shape[0]
    c, w = int(np.clip(np.floor(pixel[0]), 0, s - 1)), int(np.clip(np.floor(pixel[1]), 0, s - 1))
    sl = (slice(max(0, w - r), w + r + 1), slice(max(0, c - r), c + r + 1))
    return float(np.abs(frame[sl].astype(float) - recon[sl].astype(float)).mean())


def latent_check(policy, tasks: list[str], seeds: int, camera: str) -> tuple[dict, np.ndarray]:
    """Per task: frame MAE and the patch MAE at the goal and the object; plus a strip of frames over reconstructions."""
    from rollout.sims.metaworld import MetaWorldEnv

    out, top, bottom = {}, [], []
    for task in tasks:
        env = MetaWorldEnv(task, image_size=int(policy.config.image_size), camera=camera)
        frames, pixels = [], []
        for seed in range(42, 42 + seeds):
            obs, info = env.reset(seed=seed)
            frames.append(obs["image"])
            pixels.append(
                {k: env.project(info["full_state"][sl])[0] for k, sl in (("goal", GOAL), ("object", OBJECT))}
            )
        env.close()
        with torch.no_grad():
            recon = policy.decode_latents(policy.encode_images(torch.from_numpy(np.stack(frames)))).cpu().numpy()
        frame_mae = float(np.mean([np.abs(f.astype(float) - r.astype(float)).mean() for f, r in zip(frames, recon)]))
        out[task] = {"frame_mae": frame_mae}
        for k in ("goal", "object"):
            out[task][f"{k}_patch_mae"] = float(
                np.mean([patch_error(f, r, p[k]) for f, r, p in zip(frames, recon, pixels)])
            )
        top += frames[:4]
        bottom += list(recon[:4])
    return out, np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)


def readout(policy, tasks: list[str], camera: str, frames: int = 200, ridge: float = 1.0) -> dict:
    """Per task: held-out R² of a ridge regression from the frozen image latents to the goal's and the object's x, y.

    Reset frames of seeds 1000, 1001, ...; the first 75 % fit, the rest score. A marker the latents keep is
    decodable (R² near 1); one they drop is not (R² near 0 or below).
    """
    from rollout.sims.metaworld import MetaWorldEnv

    out = {}
    for task in tasks:
        env = MetaWorldEnv(task, image_size=int(policy.config.image_size), camera=camera)
        images, targets = [], []
        for seed in range(1000, 1000 + frames):
            obs, info = env.reset(seed=seed)
            images.append(obs["image"])
            targets.append(np.concatenate([info["full_state"][GOAL][:2], info["full_state"][OBJECT][:2]]))
        env.close()
        with torch.no_grad():
            z = policy.encode_images(torch.from_numpy(np.stack(images))).flatten(1).double().cpu().numpy()
        y = np.asarray(targets, dtype=np.float64)
        k = int(0.75 * frames)
        mu, sd = z[:k].mean(0), z[:k].std(0) + 1e-6
        x = np.hstack([(z - mu) / sd, np.ones((frames, 1))])
        w = np.linalg.solve(x[:k].T @ x[:k] + ridge * np.eye(x.shape[1]), x[:k].T @ y[:k])
        pred, test = x[k:] @ w, y[k:]
        r2 = 1 - ((pred - test) ** 2).sum(0) / ((test - test.mean(0)) ** 2).sum(0)
        out[task] = {"goal_r2_x": r2[0], "goal_r2_y": r2[1], "object_r2_x": r2[2], "object_r2_y": r2[3]}
        out[task] = {k_: float(v) for k_, v in out[task].items()}
    return out


def behaviour(episodes_path: str) -> dict:
    """Per task of ENDPOINT: success, goal correlation of the final x/y, distances to the goal, hand-puck approach."""
    from wlarl.data.episodes import load_episodes

    ds = load_episodes(episodes_path)
    rows: dict[str, list] = {}
    for i in range(ds.num_episodes):
        ep = ds.episode(i)
        task = str(ep["task_name"][0])
        if task not in ENDPOINT:
            continue
        full = np.asarray(ep["full_state"], dtype=np.float64)
        approach = float(np.linalg.norm(full[:, HAND] - full[:, OBJECT], axis=1).min())
        rows.setdefault(task, []).append(
            (full[0, GOAL], full[-1, ENDPOINT[task]], bool(np.asarray(ep["success"]).any()), approach)
        )
    out = {}
    for task, r in rows.items():
        goal = np.array([x[0] for x in r])
        end = np.array([x[1] for x in r])
        corr = [float(np.corrcoef(goal[:, k], end[:, k])[0, 1]) for k in range(2)]
        out[task] = {
            "episodes": len(r),
            "success": float(np.mean([x[2] for x in r])),
            "corr_x": corr[0],
            "corr_y": corr[1],
            "median_end_to_goal_cm": 100 * float(np.median(np.linalg.norm(end - goal, axis=1))),
            "median_goal_blind_cm": 100 * float(np.median(np.linalg.norm(end.mean(0) - goal, axis=1))),
            "median_hand_object_approach_cm": 100 * float(np.median([x[3] for x in r])),
        }
    return out


def markdown(latents: dict, reads: dict, acts: dict | None, name: str) -> str:
    lines = [f"**{name}**", "", "| task | frame MAE | goal patch MAE | object patch MAE | goal R² x / y | "
             "object R² x / y |", "|---|---|---|---|---|---|"]  # fmt: skip
    for task, v in latents.items():
        r = reads[task]
        lines.append(
            f"| {task} | {v['frame_mae']:.1f} | {v['goal_patch_mae']:.1f} | {v['object_patch_mae']:.1f} | "
            f"{r['goal_r2_x']:.2f} / {r['goal_r2_y']:.2f} | {r['object_r2_x']:.2f} / {r['object_r2_y']:.2f} |"
        )
    if acts:
        lines += ["", "| task | episodes | success | corr(goal, end) x / y | end to goal (cm) | goal-blind (cm) | "
                  "hand-object approach (cm) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for task, v in acts.items():
            lines.append(
                f"| {task} | {v['episodes']} | {v['success']:.2f} | {v['corr_x']:.2f} / {v['corr_y']:.2f} | "
                f"{v['median_end_to_goal_cm']:.1f} | {v['median_goal_blind_cm']:.1f} | "
                f"{v['median_hand_object_approach_cm']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy_path", required=True)
    p.add_argument("--episodes", default=None, help="greedy policy episodes (collect_policy_episodes.py --greedy)")
    p.add_argument("--camera", default=None, help="default: the camera the policy's episodes or SFT data used")
    p.add_argument("--seeds", type=int, default=20, help="reset frames per task for the latent check")
    p.add_argument("--name", default=None, help="row title (default: the policy path)")
    p.add_argument("--out", default="runs/goal_reading")
    args = p.parse_args(argv)
    from PIL import Image

    from wlarl.models.wla import WLAPolicy

    policy = WLAPolicy.from_pretrained(args.policy_path).eval()
    camera = args.camera
    if camera is None and args.episodes:
        from wlarl.data.episodes import load_episodes

        camera = load_episodes(args.episodes).meta.get("camera")
    camera = camera or "corner"
    latents, strip = latent_check(policy, list(ENDPOINT), args.seeds, camera)
    reads = readout(policy, list(ENDPOINT), camera)
    acts = behaviour(args.episodes) if args.episodes else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "policy_path": args.policy_path,
        "camera": camera,
        "latents": latents,
        "readout": reads,
        "behaviour": acts,
    }
    (out / "goal_reading.json").write_text(json.dumps(result, indent=2))
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(out / "recon.png")
    text = markdown(latents, reads, acts, args.name or f"{args.policy_path} ({camera})")
    (out / "goal_reading.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
