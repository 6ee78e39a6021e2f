"""Reward benchmarks: cost of the reward pass per GRPO step, and the success classifier's accuracy and calibration.

    # cost of scoring one GRPO batch (B·G = 64 rows, T = 8 chunks, 64 px) with every built-in
    OMP_NUM_THREADS=1 python benchmarks/bench_rewards.py cost --rows 64 --threads 1

    # AUROC / ECE / reliability of a trained classifier on the held-out real episodes of its run, on
    # World-Expert-predicted frames labelled with the real outcome (needs the trained policy), and on the policy's
    # own real rollouts (benchmarks/collect_policy_episodes.py)
    python benchmarks/bench_rewards.py classifier --reward_dir runs/reward --dataset_path runs/demos \
        --policy_path runs/sft/final --policy_episodes runs/policy_episodes

Results and the commands that produced them are in BENCHMARKS.md (## Rewards).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewards import RewardScorer  # noqa: E402
from rewards.goal_similarity import GoalSimilarityReward  # noqa: E402
from rewards.progress import ProgressReward  # noqa: E402
from rewards.shaping import ShapingReward  # noqa: E402
from rewards.subgoal_success import SubgoalSuccessReward  # noqa: E402
from rewards.subtask_text import SubtaskTextReward  # noqa: E402
from rewards.success_classifier import (  # noqa: E402
    FrameSet,
    SuccessClassifier,
    SuccessClassifierConfig,
    auroc,
    evaluate_classifier,
    format_reliability,
    frames_from_dataset,
    load_success_classifier,
    predicted_frames,
    split_by_episode,
)
from wlarl.types import ActionSample, Observation, Trajectories  # noqa: E402

TASKS = ["reach-v3", "push-v3", "drawer-open-v3", "button-press-topdown-v3"]
RULES = {t: [f"reach the {t}", f"do {t}"] for t in TASKS}


def fake_trajectories(n: int, t: int, g: int, size: int = 64, h: int = 8, a: int = 4, c: int = 16, hw: int = 8):
    """A GRPO batch of N rows with random predictions (the timings do not depend on the values)."""
    gen = torch.Generator().manual_seed(0)
    tasks = [TASKS[(i // g) % len(TASKS)] for i in range(n)]
    samples = [
        ActionSample(
            actions=torch.rand(n, h, a, generator=gen) * 2 - 1,
            log_prob=torch.zeros(n),
            log_prob_terms=torch.zeros(n, h, a),
            subtask_ids=torch.randint(1, 100, (n, 6), generator=gen),
            subtask_mask=torch.ones(n, 6, dtype=torch.bool),
            subtask_log_probs=torch.zeros(n, 6),
            subtask_text=[RULES[task][min(j, 1)] for task in tasks],
        )
        for j in range(t)
    ]
    obs = Observation(
        images=torch.randint(0, 255, (n, size, size, 3), dtype=torch.uint8, generator=gen),
        states=torch.rand(n, 4, generator=gen),
        instructions=[f"do {x}" for x in tasks],
        task_names=tasks,
        latents=torch.rand(n, c, hw, hw, generator=gen),
    )
    alive = torch.ones(n, t, dtype=torch.bool)
    alive[::3, t // 2 :] = False  # some episodes end early (predicted success)
    return Trajectories(
        observations=[obs] * t,
        samples=samples,
        subgoal_images=torch.randint(0, 255, (n, t, size, size, 3), dtype=torch.uint8, generator=gen),
        subgoal_latents=torch.rand(n, t, c, hw, hw, generator=gen) * 2 - 1,
        states=torch.rand(n, t, 4, generator=gen),
        success_logits=torch.randn(n, t, generator=gen),
        alive=alive,
        success=torch.rand(n, generator=gen) < 0.4,
        instructions=obs.instructions,
        task_names=tasks,
        group_size=g,
    )


def bench_cost(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    traj = fake_trajectories(args.rows, args.horizon, args.group_size)
    classifier = SuccessClassifier(SuccessClassifierConfig(task_names=TASKS)).eval()  # default size (train_reward)
    goals = {task: torch.rand(64, 16, 8, 8) * 2 - 1 for task in TASKS}
    funcs = {
        "subgoal_success": SubgoalSuccessReward(classifier),
        "goal_similarity": GoalSimilarityReward(goals),
        "progress": ProgressReward(),
        "subtask_text": SubtaskTextReward(RULES),
        "shaping": ShapingReward(),
        "predicted_success": "predicted_success",
    }
    extra = {"subgoal_success, mode=max (all N·T frames)": SubgoalSuccessReward(classifier, mode="max")}
    rows = []
    for name, fn in list(funcs.items()) + list(extra.items()) + [("the six built-ins above in one scorer", None)]:
        scorer = (
            RewardScorer(list(funcs.values()), names=list(funcs)) if fn is None else RewardScorer([fn], names=[name])
        )
        scorer(traj)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            scorer(traj)
            times.append(time.perf_counter() - start)
        rows.append((name, statistics.median(times) * 1e3, min(times) * 1e3))
    frames = args.rows * args.horizon
    print(
        f"reward pass, N = B·G = {args.rows} rows × T = {args.horizon} chunks ({frames} 64 px subgoals), "
        f"{args.threads} thread(s), median of {args.repeats}:\n"
    )
    print("| reward | ms per GRPO step (median) | min |")
    print("|---|---|---|")
    for name, med, best in rows:
        print(f"| {name} | {med:.1f} | {best:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **vars(args)}, indent=2))


def print_per_task(model: SuccessClassifier, frames: FrameSet, label: str) -> None:
    """Per-task AUROC, AUROC without the boundary frames, and the hard-negative false-positive rate."""
    probs = model.predict_proba(torch.from_numpy(frames.images), frames.task_names).numpy()
    tasks = np.asarray(frames.task_names)
    print(f"\n{label}: | task | frames | positives | AUROC | AUROC w/o boundary | hard negatives | hard-neg FPR |")
    print("|---|---|---|---|---|---|---|")
    for task in [*sorted(set(frames.task_names)), "all"]:
        k = np.ones(len(tasks), bool) if task == "all" else tasks == task
        nb = k & ~frames.boundary
        hn = k & frames.hard_negative
        fpr = f"{(probs[hn] >= model.config.threshold).mean():.2f}" if hn.any() else "–"
        print(
            f"| {task} | {k.sum()} | {frames.labels[k].sum()} | {auroc(probs[k], frames.labels[k]):.3f} | "
            f"{auroc(probs[nb], frames.labels[nb]):.3f} | {hn.sum()} | {fpr} |"
        )


def bench_classifier(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    reward_dir = Path(args.reward_dir)
    run_cfg = json.loads((reward_dir / "config.json").read_text())
    model = load_success_classifier(reward_dir)
    radius = args.hard_negative_radius or run_cfg.get("hard_negative_radius", 0.05)
    early = run_cfg.get("early_negative_fraction", 0.3)
    frames = frames_from_dataset(args.dataset_path, radius, early)
    _, _, test = split_by_episode(frames, [run_cfg["val_fraction"], run_cfg["test_fraction"]], seed=run_cfg["seed"])
    print(f"held-out test episodes: {test.summary()}")
    results = evaluate_classifier(model, test, "real/")
    print_per_task(model, test, "real")
    if args.policy_path:
        from wlarl import WLAPolicy

        policy = WLAPolicy.from_pretrained(args.policy_path).eval()
        pred = predicted_frames(
            policy,
            args.dataset_path,
            policy.config.chunk_size,
            np.unique(test.episode),
            args.max_windows,
            hard_negative_radius=radius,
            early_fraction=early,
        )
        print(f"World-Expert-predicted frames (test episodes): {pred.summary()}")
        results.update(evaluate_classifier(model, pred, "predicted/"))
        print_per_task(model, pred, "predicted")
    if args.policy_episodes:
        # the policy's own sampled real episodes (benchmarks/collect_policy_episodes.py, or a co-evolution round's):
        # frames the classifier never saw, in the policy's poses, solved states after the first success included
        own = frames_from_dataset(args.policy_episodes, radius, early)
        print(f"the policy's own real episodes: {own.summary()}")
        results.update(evaluate_classifier(model, own, "policy/"))
        print_per_task(model, own, "policy")
    for key in ("real/", "predicted/", "policy/"):
        if f"{key}auroc" not in results:
            continue
        print(
            f"\n{key.rstrip('/')}: AUROC {results[key + 'auroc']:.4f}, ECE {results[key + 'ece']:.4f}, "
            f"Brier {results[key + 'brier']:.4f}, precision {results[key + 'precision']:.3f}, "
            f"recall {results[key + 'recall']:.3f} at threshold {model.config.threshold:.3f}"
            + (
                f", hard-negative FPR {results[key + 'hard_negative_false_positive_rate']:.3f}"
                if key + "hard_negative_false_positive_rate" in results
                else ""
            )
        )
        print(format_reliability(results[key + "reliability"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cost", help="time the reward pass of one GRPO batch")
    p.add_argument("--rows", type=int, default=64, help="N = B·G rows")
    p.add_argument("--group_size", type=int, default=8, help="G")
    p.add_argument("--horizon", type=int, default=8, help="T chunks per imagined episode")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="")
    p = sub.add_parser("classifier", help="AUROC and calibration of a trained success classifier")
    p.add_argument("--reward_dir", required=True, help="train_reward output_dir")
    p.add_argument("--dataset_path", required=True, help="the episode dataset it was trained on")
    p.add_argument("--policy_path", default="", help="trained WLA policy for World-Expert-predicted frames")
    p.add_argument("--max_windows", type=int, default=1000)
    p.add_argument(
        "--policy_episodes", default="", help="an episode dataset of the policy's own real rollouts: AUROC on them too"
    )
    p.add_argument("--hard_negative_radius", type=float, default=0.0, help="override the run's radius (metres)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="")
    args = parser.parse_args()
    bench_cost(args) if args.cmd == "cost" else bench_classifier(args)


if __name__ == "__main__":
    main()
