"""Near misses as negatives for the success classifier: how often they fool it, and whether training on them helps.

    OMP_NUM_THREADS=1 MUJOCO_GL=egl python benchmarks/bench_near_miss.py \
        --bootstrap /work/cache/bootstrap/default-58b178768ff3 --out /work/cache/near_miss

Steps (each skipped when its output exists, unless --redo):

1. collect `near_miss` episodes (collect_demos' `near_miss` mode with `ensure_miss`) for the default preset's tasks,
   image size and camera: `out/train` (seeds --train_seed + e) and `out/heldout` (seeds --heldout_seed + e), both
   apart from the demos' seeds (collect_demos.seed + 0 … episodes_per_task - 1); also, without frames, how often a
   plain stop (no `ensure_miss`) still ends in success through momentum;
2. score the bootstrap classifier (`bootstrap/reward`) on every near-miss frame: the false-positive rate (calibrated
   probability >= its threshold) among unsolved frames whose hand is within --radius of a success hand pose of the
   task (poses: the positive frames of the demo dataset, as `rewards/success_classifier/labels.py` finds them), and
   among unsolved frames of the last `hold_steps` steps of each episode; overall and per task;
3. retrain with `recipes/train_reward.py --config default` on the demos plus `--extra_dataset_paths out/train`
   (`out/reward`), and once without the extras as a control (`out/reward_control`: same recipe and seed, so the
   difference is the near misses, not retraining); the bootstrap's `--policy_path` is passed as it was there;
4. compare the bootstrap, control and near-miss classifiers on `out/heldout` (never trained or calibrated on) and on
   the demos' held-out test episodes (train_reward's split, seed 0): AUROC, recall, precision, hard-negative FPR,
   each at the model's own calibrated threshold, and at the threshold that gives every model the same recall on the
   demos' test positives (the bootstrap's own recall, and --recalls), with the threshold-free AUROC of those
   positives against the held-out near misses.

Writes `out/bench_near_miss.json` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from rewards.success_classifier import (  # noqa: E402
    auroc,
    classification_metrics,
    frame_labels,
    frames_from_dataset,
    load_success_classifier,
    split_by_episode,
)
from wlarl.cli import load_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def collect_near_misses(out: Path, seed: int, episodes: int, hold_steps: int, stop_before: tuple[int, int]) -> None:
    from rollout.collect import CollectConfig, collect

    preset = load_section("default", "collect_demos")
    cfg = CollectConfig(
        output_dir=str(out),
        tasks=preset["tasks"],
        episodes_per_task=episodes,
        noise_modes=["near_miss"],
        noise_weights=[1.0],
        stop_before_min=stop_before[0],
        stop_before_max=stop_before[1],
        hold_steps=hold_steps,
        ensure_miss=True,
        image_size=preset.get("image_size", 64),
        camera=preset.get("camera", "corner"),
        max_episode_steps=preset["max_episode_steps"],
        num_workers=0,  # one process: the machine is shared
        seed=seed,
        progress=False,
    )
    result = collect(cfg)
    (out / "summary.json").write_text(json.dumps(result, indent=2))


def plain_stop_outcomes(tasks: list[str], seeds: list[int], hold_steps: int, stop_before: tuple[int, int]) -> dict:
    """Without frames: per task, how often the plain near_miss stop (t* - d, no ensure_miss) still succeeds."""
    from rollout.experts import NoiseSpec, ScriptedExpert, clean_then_hold
    from rollout.sims import make_env

    max_steps = load_section("default", "collect_demos")["max_episode_steps"]
    spec = NoiseSpec("near_miss", stop_before=stop_before, hold_steps=hold_steps)
    out: dict[str, Any] = {}
    for task in tasks:
        env, expert = make_env(task, render_images=False, max_episode_steps=max_steps), ScriptedExpert(task, spec)
        succeeded = no_clean_success = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for seed in seeds:
                t_star = clean_then_hold(env, expert, seed)
                if t_star is None:
                    no_clean_success += 1
                    continue
                succeeded += clean_then_hold(env, expert, seed, expert.draw_stop_step(seed, t_star)) is not None
        env.close()
        planned = len(seeds) - no_clean_success
        out[task] = {
            "episodes": len(seeds),
            "clean_never_succeeds": no_clean_success,
            "plain_stop_success_rate": succeeded / max(planned, 1),
        }
    total = sum(r["plain_stop_success_rate"] * (r["episodes"] - r["clean_never_succeeds"]) for r in out.values())
    out["all"] = {
        "plain_stop_success_rate": total / max(sum(r["episodes"] - r["clean_never_succeeds"] for r in out.values()), 1)
    }
    return out


def success_poses(dataset: Path) -> dict[str, np.ndarray]:
    """task -> float [P, 3] hand positions of the positive frames (labels.py's success poses)."""
    from datasets import load_from_disk

    ds = load_from_disk(str(dataset))
    cols = ds.with_format("numpy", columns=["state", "success", "episode_index", "step_index"])
    labels = frame_labels(
        np.asarray(cols["success"], bool), np.asarray(cols["episode_index"]), np.asarray(cols["step_index"])
    )
    hand = np.asarray(cols["state"], np.float32)[:, :3]
    tasks = np.asarray(ds["task_name"])
    return {t: hand[(tasks == t) & labels] for t in np.unique(tasks)}


def near_miss_frames(dataset: Path, poses: dict[str, np.ndarray], radius: float, hold_steps: int) -> dict[str, Any]:
    """Images, tasks and the masks `unsolved & near a success pose` and `unsolved & in the last hold_steps`."""
    from datasets import load_from_disk

    ds = load_from_disk(str(dataset))
    cols = ds.with_format("numpy")
    episode, step = np.asarray(cols["episode_index"]), np.asarray(cols["step_index"])
    labels = frame_labels(np.asarray(cols["success"], bool), episode, step)
    hand = np.asarray(cols["state"], np.float32)[:, :3]
    tasks = [str(t) for t in ds["task_name"]]
    near = np.zeros(len(labels), bool)
    for task in set(tasks):
        rows = np.flatnonzero(np.asarray(tasks) == task)
        if task in poses and len(poses[task]):
            d = torch.cdist(torch.from_numpy(hand[rows]), torch.from_numpy(poses[task])).amin(dim=1).numpy()
            near[rows] = d <= radius
    last_step = {e: step[episode == e].max() for e in np.unique(episode)}
    in_hold = step > np.array([last_step[e] for e in episode]) - hold_steps  # the hold's hold_steps frames
    return {
        "images": np.asarray(cols["image"], np.uint8),
        "tasks": tasks,
        "episode": episode,
        "labels": labels,
        "near": ~labels & near,
        "hold": ~labels & in_hold,
    }


def false_positive_rates(model: Any, frames: dict[str, Any]) -> dict[str, Any]:
    probs = model.predict_proba(torch.from_numpy(frames["images"]), frames["tasks"]).numpy()
    fooled = probs >= model.config.threshold
    tasks = np.asarray(frames["tasks"])
    out: dict[str, Any] = {"threshold": model.config.threshold}
    for name in ("near", "hold"):
        mask = frames[name]
        out[name] = {
            "frames": int(mask.sum()),
            "episodes": len(np.unique(frames["episode"][mask])),
            "false_positive_rate": float(fooled[mask].mean()) if mask.any() else float("nan"),
            "mean_probability": float(probs[mask].mean()) if mask.any() else float("nan"),
            "per_task": {
                t: {"frames": int((mask & (tasks == t)).sum()), "fpr": float(fooled[mask & (tasks == t)].mean())}
                for t in sorted(set(frames["tasks"]))
                if (mask & (tasks == t)).any()
            },
        }
    return out


def demo_test_metrics(model: Any, test: Any) -> dict[str, Any]:
    probs = model.predict_proba(torch.from_numpy(test.images), test.task_names).numpy()
    m = classification_metrics(probs, test.labels, model.config.threshold)
    keep = ("auroc", "ece", "recall", "precision", "accuracy", "positives", "count")
    out = {k: m[k] for k in keep}
    out["hard_negative_false_positive_rate"] = float((probs[test.hard_negative] >= model.config.threshold).mean())
    out["hard_negatives"] = int(test.hard_negative.sum())
    return out


def at_matched_recall(model: Any, test: Any, frames: dict[str, Any], recall: float) -> dict[str, Any]:
    """The near-miss FPR at the threshold that gives `recall` on the demos' test positives (so a model that only
    raised its threshold gains nothing), and the threshold-free AUROC of those positives against the near misses."""
    p_test = model.predict_proba(torch.from_numpy(test.images), test.task_names).numpy()
    p_nm = model.predict_proba(torch.from_numpy(frames["images"]), frames["tasks"]).numpy()
    pos = np.sort(p_test[test.labels])[::-1]
    threshold = float(pos[max(int(np.ceil(recall * len(pos))), 1) - 1])
    out: dict[str, Any] = {"recall": recall, "threshold": threshold}
    for name in ("near", "hold"):
        neg = p_nm[frames[name]]
        out[f"{name}_false_positive_rate"] = float((neg >= threshold).mean())
        out[f"{name}_auroc_vs_demo_positives"] = auroc(np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))])
    flagged = p_test >= threshold
    out["demo_test_precision"] = float(test.labels[flagged].mean())
    out["demo_test_hard_negative_false_positive_rate"] = float(flagged[test.hard_negative].mean())
    return out


def train(out: Path, data: Path, extra: list[Path], policy: Path | None) -> float:
    cmd = [sys.executable, "recipes/train_reward.py", "--config", "default", "--dataset_path", str(data)]
    cmd += ["--output_dir", str(out)]
    if extra:
        cmd += ["--extra_dataset_paths", *map(str, extra)]
    if policy is not None:
        cmd += ["--policy_path", str(policy)]
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", type=Path, default=Path("/work/cache/bootstrap/default-58b178768ff3"))
    p.add_argument("--out", type=Path, default=Path("/work/cache/near_miss"))
    p.add_argument("--train_episodes", type=int, default=12, help="near-miss episodes per task for training")
    p.add_argument("--heldout_episodes", type=int, default=8, help="near-miss episodes per task held out")
    p.add_argument("--train_seed", type=int, default=50000)
    p.add_argument("--heldout_seed", type=int, default=60000)
    p.add_argument("--hold_steps", type=int, default=15)
    p.add_argument("--stop_before", type=int, nargs=2, default=(1, 8))
    p.add_argument("--radius", type=float, default=0.05, help="hard-negative radius, metres (train_reward's)")
    p.add_argument(
        "--recalls", type=float, nargs="+", default=[0.7, 0.8, 0.9], help="recalls on the demos' test positives at "
        "which the models are also compared (besides the bootstrap classifier's own recall at its threshold)"
    )  # fmt: skip
    p.add_argument("--redo", action="store_true", help="recollect and retrain even where outputs exist")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out, boot = args.out, args.bootstrap
    out.mkdir(parents=True, exist_ok=True)
    data = boot / "data"
    demo_cfg = json.loads((data / "config.json").read_text())
    demo_seeds = [demo_cfg["seed"], demo_cfg["seed"] + demo_cfg["episodes_per_task"] - 1]
    tasks = load_section("default", "collect_demos")["tasks"]
    for start in (args.train_seed, args.heldout_seed):
        if start <= demo_seeds[1] and start + max(args.train_episodes, args.heldout_episodes) > demo_seeds[0]:
            raise ValueError(f"seeds from {start} overlap the demos' seeds {demo_seeds}; pick others")
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "demo_seeds": demo_seeds}

    # 1. collect
    timings = {}
    for name, seed, n in (("train", args.train_seed, args.train_episodes), ("heldout", args.heldout_seed, args.heldout_episodes)):  # fmt: skip
        if args.redo or not (out / name / "summary.json").is_file():
            t0 = time.time()
            collect_near_misses(out / name, seed, n, args.hold_steps, tuple(args.stop_before))
            timings[f"collect_{name}_s"] = time.time() - t0
        summary = json.loads((out / name / "summary.json").read_text())
        report[f"collect_{name}"] = {
            "episodes": next(
                r["episodes"] for r in summary["rows"] if r["task"] == "all" and r["noise_mode"] == "all"
            ),
            "success_rate": {r["task"]: r["success_rate"] for r in summary["rows"] if r["noise_mode"] != "all"},
            "seconds": summary["seconds"],
        }
    seeds = [args.train_seed + e for e in range(args.train_episodes)]
    seeds += [args.heldout_seed + e for e in range(args.heldout_episodes)]
    report["plain_stop"] = plain_stop_outcomes(tasks, seeds, args.hold_steps, tuple(args.stop_before))

    # 2. the bootstrap classifier on every near-miss frame
    poses = success_poses(data)
    frames = {n: near_miss_frames(out / n, poses, args.radius, args.hold_steps) for n in ("train", "heldout")}
    both = {
        k: np.concatenate([frames["train"][k], frames["heldout"][k]]) for k in ("images", "labels", "near", "hold")
    }
    both["tasks"] = frames["train"]["tasks"] + frames["heldout"]["tasks"]
    both["episode"] = np.concatenate([frames["train"]["episode"], frames["heldout"]["episode"] + 10**6])
    before = load_success_classifier(boot / "reward")
    report["bootstrap_on_all_near_misses"] = false_positive_rates(before, both)

    # 3. retrain: control (demos only) and with the training near misses
    policy = boot / "policy" / "final"
    policy = policy if policy.is_dir() else None
    for name, extra in (("reward_control", []), ("reward", [out / "train"])):
        if args.redo or not (out / name / "results.json").is_file():
            timings[f"train_{name}_s"] = train(out / name, data, extra, policy)

    # 4. compare on held-out near misses and on the demos' held-out episodes
    demo = frames_from_dataset(data, args.radius)
    _, _, test = split_by_episode(demo, [0.15, 0.15], seed=0)  # train_reward's test split (default preset, seed 0)
    report["models"] = {}
    recall = None  # the bootstrap classifier's recall at its threshold, set by the first model
    for name, path in (("bootstrap", boot / "reward"), ("control", out / "reward_control"), ("near_miss", out / "reward")):  # fmt: skip
        model = load_success_classifier(path)
        results = json.loads((path / "results.json").read_text())
        demo_metrics = demo_test_metrics(model, test)
        recall = recall if recall is not None else demo_metrics["recall"]
        report["models"][name] = {
            "path": str(path),
            "heldout_near_misses": false_positive_rates(model, frames["heldout"]),
            "demo_test": demo_metrics,
            "at_bootstrap_recall": at_matched_recall(model, test, frames["heldout"], recall),
            "at_recall": {str(r): at_matched_recall(model, test, frames["heldout"], r) for r in args.recalls},
            "results_eval_real_auroc": results.get("eval/real/auroc"),
            "results_eval_predicted_auroc": results.get("eval/predicted/auroc"),
        }
    report["timings"] = timings
    text = json.dumps(report, indent=2)
    (out / "bench_near_miss.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
