"""How close is the policy's greedy chunk to the scripted expert's, on single frames of fresh layouts?
(BENCHMARKS.md, "Expert chunks on the fresh-layout frames").

    MUJOCO_GL=egl python benchmarks/bench_frame_actions.py --policy_paths <policy>/final [<policy>/final ...] \
        --tasks reach-v3 push-v3 --n 200 --out runs/bench_frame_actions

Frames as `sft_wla --meta_state_frames` draws them (`rollout.collect.state_frames`: a seeded reset, up to
`--random_steps` random actions, up to `--expert_steps` clean expert steps), each labelled with the clean expert's
next chunk. Two seed ranges: the first frames an SFT with `meta_state_frame_seed` 100000 trains on ("train"), and
seeds 20020+, which no SFT or demonstration uses ("held-out"). Every policy acts greedily once per frame; its chunk is
compared with the expert's: the median cosine between the two chunks' mean x / y / z motion, the R² of the expert's
mean motion by the policy's, and the MSE over the whole chunk. Equal numbers on both ranges mean the policy does not
recall its training frames.

Much of the expert's motion follows from where the hand is, which the robot state gives. Two goal-blind references:
the clean expert's first action from the same state with the goal replaced by the frames' mean goal, and a
nearest-neighbour regressor (k = 10) from the hand's position to the expert's mean motion, fitted on the "train"
frames and scored on the held-out ones. The second catches a shortcut of frames along the expert's way: the hand's
offset from its start already points at the goal. A policy that reads the goal beats both.

With `--episodes` (datasets of `collect_policy_episodes.py`) it also scores the closed loop: the recorded action
against the clean expert's at every state the policy visited, by the hand's distance to the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_goal_learning import GOAL  # noqa: E402  (the goal in the 39-d state, which the scripted experts read)

SEEDS = {"train": 100_000, "held-out": 20_020}


def goal_blind_actions(task: str, full_states: np.ndarray) -> np.ndarray:
    """[N, 1, 4] first actions of the clean expert from `full_states` [N, 39] with every goal set to their mean."""
    from rollout.experts import ScriptedExpert

    expert = ScriptedExpert(task, "clean")
    blind = np.array(full_states, dtype=np.float64)
    blind[:, GOAL] = blind[:, GOAL].mean(0)
    return np.stack([expert.clean_action(fs) for fs in blind])[:, None]


def chunk_agreement(policy: np.ndarray, expert: np.ndarray) -> dict[str, float]:
    """Agreement of chunks [N, H, A] (x / y / z first): median cosine and R² of the mean x / y / z motion, and the
    MSE over every step and dimension."""
    if policy.shape != expert.shape or policy.ndim != 3 or policy.shape[-1] < 3:
        raise ValueError(f"chunk_agreement: expected two [N, H, A ≥ 3] arrays, got {policy.shape} and {expert.shape}")
    p, e = policy[:, :, :3].mean(1), expert[:, :, :3].mean(1)
    cos = (p * e).sum(1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(e, axis=1), 1e-8)
    r2 = 1 - ((p - e) ** 2).sum() / max(float(((e - e.mean(0)) ** 2).sum()), 1e-12)
    return {"cos_median": float(np.median(cos)), "r2_motion": float(r2), "mse": float(((policy - expert) ** 2).mean())}


def hand_knn_r2(train: dict, test: dict, k: int = 10) -> float:
    """R² of the expert's mean x / y / z motion on `test` frames predicted from the hand's position alone: the mean
    motion of the k `train` frames whose hands are nearest."""
    h_train, h_test = train["full_state"][:, :3], test["full_state"][:, :3]
    m_train, m_test = train["action"][:, :, :3].mean(1), test["action"][:, :, :3].mean(1)
    d = ((h_test[:, None] - h_train[None]) ** 2).sum(-1)
    pred = m_train[np.argsort(d, axis=1)[:, :k]].mean(1)
    return float(1 - ((pred - m_test) ** 2).sum() / max(float(((m_test - m_test.mean(0)) ** 2).sum()), 1e-12))


def closed_loop(path: str, bins=(0.0, 0.05, 0.10, 0.15, 0.20, np.inf)) -> list[dict]:
    """Per task of the episodes at `path`: median cosine of the recorded action's x / y / z against the clean
    expert's at every visited state, overall and by the hand's distance to the goal (metres, `bins`)."""
    from rollout.experts import ScriptedExpert
    from wlarl.data import load_episodes

    ep = load_episodes(path)
    full, action, names = (np.asarray(ep.dataset["full_state"]), np.asarray(ep.dataset["action"]),
                           ep.dataset["task_name"])  # fmt: skip
    rows = []
    for task in sorted(set(names)):
        expert = ScriptedExpert(task, "clean")
        t = np.array([i for s, e in ep.episode_ranges if names[s] == task for i in range(s, e - 1)])
        want = np.stack([expert.clean_action(fs) for fs in full[t]])[:, :3]
        got = action[t, :3]
        cos = (got * want).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-8)
        dist = np.linalg.norm(full[t, :3] - full[t, GOAL], axis=1)
        row = {"episodes": path, "task": task, "states": len(t), "cos_median": float(np.median(cos))}
        for lo, hi in zip(bins[:-1], bins[1:]):
            m = (dist >= lo) & (dist < hi)
            label = f"{100 * lo:.0f}-{100 * hi:.0f} cm" if np.isfinite(hi) else f"≥ {100 * lo:.0f} cm"
            row[label] = (float(np.median(cos[m])) if m.any() else float("nan"), int(m.sum()))
        rows.append(row)
    return rows


def greedy_chunks(policy, frames: dict, task: str, batch: int = 100) -> np.ndarray:
    from wlarl.types import Observation

    out = []
    with torch.no_grad():
        for i in range(0, len(frames["image"]), batch):
            sl = slice(i, i + batch)
            obs = Observation(
                images=torch.from_numpy(frames["image"][sl]), states=torch.from_numpy(frames["state"][sl]),
                instructions=list(frames["instruction"][sl]), task_names=[task] * len(frames["image"][sl]),
            ).to(policy.device)  # fmt: skip
            out.append(policy.act(obs, sample=False).actions.float().cpu().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy_paths", nargs="+", required=True)
    ap.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    ap.add_argument("--camera", default="corner")
    ap.add_argument("--n", type=int, default=200, help="frames per task and seed range")
    ap.add_argument("--random_steps", type=int, default=30)
    ap.add_argument("--target_steps", type=int, default=0)
    ap.add_argument("--expert_steps", type=int, default=60)
    ap.add_argument("--episodes", nargs="*", default=[], help="policy episodes for the closed-loop check")
    ap.add_argument("--out", default="runs/bench_frame_actions")
    args = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rollout.collect import state_frames
    from wlarl.models.wla import WLAPolicy

    policies = [WLAPolicy.from_pretrained(p).eval() for p in args.policy_paths]
    rows, knn = [], {}
    for task in args.tasks:
        by_range = {}
        for name, first in SEEDS.items():
            rendered = {}  # frames per image size and chunk length: the same for every policy
            for path, policy in zip(args.policy_paths, policies):
                key = (policy.config.image_size, policy.config.chunk_size)
                if key not in rendered:
                    rendered[key] = state_frames(
                        task, range(first, first + args.n), key[0], args.camera, random_steps=args.random_steps,
                        target_steps=args.target_steps, expert_steps=args.expert_steps, action_chunk=key[1],
                        progress=False,
                    )  # fmt: skip
                frames = by_range[name] = rendered[key]
                chunks, expert = greedy_chunks(policy, frames, task), frames["action"]
                first_action = chunk_agreement(chunks[:, :1], expert[:, :1])
                blind = chunk_agreement(goal_blind_actions(task, frames["full_state"]), expert[:, :1])
                rows.append({
                    "policy": path, "task": task, "seeds": f"{name} ({first}+)", "frames": args.n,
                    **chunk_agreement(chunks, expert),
                    **{f"first_{k}": v for k, v in first_action.items()},
                    **{f"blind_first_{k}": v for k, v in blind.items()},
                })  # fmt: skip
                print(rows[-1], flush=True)
        knn[task] = hand_knn_r2(by_range["train"], by_range["held-out"])
    loops = [row for path in args.episodes for row in closed_loop(path)]
    lines = [
        f"{args.camera}, {args.n} frames per task and seed range (up to {args.random_steps} random, up to "
        f"{args.target_steps} random-target, then up to {args.expert_steps} clean expert steps after the reset); the "
        "greedy chunk against the clean expert's.",
        "",
        "| policy | task | seeds | chunk: cos of mean motion (median) | chunk: R² of the expert's mean motion | "
        "chunk MSE | first action: cos / R² | goal-blind expert's first action: cos / R² |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| `{r['policy']}` | {r['task']} | {r['seeds']} | {r['cos_median']:.2f} | {r['r2_motion']:.2f} | "
          f"{r['mse']:.3f} | {r['first_cos_median']:.2f} / {r['first_r2_motion']:.2f} | "
          f"{r['blind_first_cos_median']:.2f} / {r['blind_first_r2_motion']:.2f} |" for r in rows],
        "",
        "Hand-only nearest neighbours (fitted on the train frames), R² of the expert's mean motion on the held-out "
        "frames: " + ", ".join(f"{t} {v:.2f}" for t, v in knn.items()) + ".",
    ]  # fmt: skip
    if loops:
        bands = [k for k in loops[0] if k.endswith("cm")]
        lines += [
            "", "Closed loop: median cosine of the recorded action against the clean expert's at the visited states "
            "(states in brackets), by the hand's distance to the goal.", "",
            "| episodes | task | states | all | " + " | ".join(bands) + " |", "|---|---|---|---|" + "---|" * len(bands),
            *[f"| `{r['episodes']}` | {r['task']} | {r['states']} | {r['cos_median']:.2f} | "
              + " | ".join(f"{r[b][0]:.2f} ({r[b][1]})" for b in bands) + " |" for r in loops],
        ]  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frame_actions.json").write_text(json.dumps({"frames": rows, "hand_knn_r2": knn, "closed_loop": loops},
                                                       indent=2))  # fmt: skip
    (out / "frame_actions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
