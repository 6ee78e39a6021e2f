"""Advantage agreement of GRPO configurations, before any step: which reward × horizon × success signal points the
way reality does (`rollout.agreement.AdvantageAgreement`, the diagnostic `--agreement_steps` logs in training).

For each configuration (reward functions with weights, imagined horizon h, success signal), the same branch points
(middle and late in the dataset's successful demonstrations; late = h chunks before the demonstration's success) are
imagined G times by the policy, the training rewards give advantages as GRPO computes them, and the same actions are
replayed in Meta-World. Reported: the share of rows whose imagined advantage has the sign of the real success's
(groups whose real success varies) and of the real shaped return's, the rewards' ceiling on the real replay, and the
imagined / real success of the rows.

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/bench_agreement.py \\
        --bootstrap ~/.cache/wlarl/bootstrap/default-<key> --per_task 2 --output runs/bench_agreement.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rewards import build_reward_scorer  # noqa: E402
from rewards.state_reward import load_state_reward  # noqa: E402
from rollout.agreement import AdvantageAgreement, agreement_points  # noqa: E402
from rollout.experts import SUBTASK_RULES  # noqa: E402
from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from wlarl.data.episodes import load_episodes  # noqa: E402
from wlarl.models.wla import WLAPolicy  # noqa: E402

# name -> (reward functions, weights, horizon, success signal)
CONFIGS = {
    "default: subgoal_success + 0.05 shaping, h=10, both": (["subgoal_success", "shaping"], [1.0, 0.05], 10, "both"),
    "subgoal_success + 0.05 shaping, h=4, both": (["subgoal_success", "shaping"], [1.0, 0.05], 4, "both"),
    "state_success, h=4, state": (["state_success"], [1.0], 4, "state"),
    "state_progress, h=4, state": (["state_progress"], [1.0], 4, "state"),
    "state_value, h=4, state": (["state_value"], [1.0], 4, "state"),
    "state_value, h=2, state": (["state_value"], [1.0], 2, "state"),
    "state_progress, h=10, state": (["state_progress"], [1.0], 10, "state"),
}


def run(args) -> dict:
    b = Path(args.bootstrap)
    policy = WLAPolicy.from_pretrained(b / "policy" / "final").eval()
    world = freeze_snapshot(policy)
    episodes = load_episodes(b / "data")
    tasks = sorted(set(episodes.dataset["task_name"]))
    H = int(policy.config.chunk_size)
    env_kwargs = {"image_size": int(policy.config.image_size), **({"camera": episodes.meta["camera"]}
                  if "camera" in episodes.meta else {})}  # fmt: skip
    state_model = load_state_reward(b / "state_reward")
    results = {}
    for name, (funcs, weights, h, signal) in CONFIGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.perf_counter()
        scorer = build_reward_scorer(
            funcs, weights, reward_model_path=str(b / "reward" / "final"), dataset_path=str(b / "data"), policy=world,
            subtask_rules=SUBTASK_RULES, state_reward_path=str(b / "state_reward"),
        )  # fmt: skip
        found = build_reward_scorer(["subgoal_success"], reward_model_path=str(b / "reward" / "final"))
        classifier, threshold = found.find_success_classifier()
        engine = ImaginationEngine(
            world, horizon=h, success_signal=signal, success_classifier=classifier, classifier_threshold=threshold,
            state_success=lambda fs, tn: state_model.predict(fs, tn)[0], state_threshold=state_model.threshold,
            reencode=True,
        )  # fmt: skip
        points = agreement_points(episodes, tasks, args.per_task, ["middle", "late"], late_steps=h * H)
        check = AdvantageAgreement(
            engine, scorer, points, group_size=args.group, horizon=h, chunk_size=H, temperature=args.temperature,
            env_kwargs=env_kwargs, seed=args.seed,
        )  # fmt: skip
        out = check(policy, step=0)
        check.close()
        out = {k.replace("verify/", ""): v for k, v in out.items()}
        out["seconds"] = time.perf_counter() - t0
        results[name] = out
        print(name, json.dumps({k: round(v, 3) for k, v in out.items()}), flush=True)
    return {"args": vars(args), "configs": results}


def markdown(res: dict) -> str:
    lines = [
        "| configuration | vs success: sign agreement (groups) | Spearman | vs shaped return: sign agreement | "
        "ceiling vs success | ceiling vs return | imagined / real success of the rows | s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(d, k):
        v = d.get(k)
        return "–" if v is None else f"{v:.2f}"

    for name, d in res["configs"].items():
        lines.append(
            f"| {name} | {f(d, 'advantage_agreement')} ({int(d['agreement_groups'])}) | {f(d, 'advantage_spearman')} | "
            f"{f(d, 'advantage_agreement_return')} | {f(d, 'advantage_agreement_ceiling')} | "
            f"{f(d, 'advantage_agreement_ceiling_return')} | {d['agreement_imagined_success']:.2f} / "
            f"{d['agreement_real_success']:.2f} | {d['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True, help="a bootstrap folder: policy/, data/, reward/, state_reward/")
    p.add_argument("--per_task", type=int, default=2, help="successful demonstrations per task to branch from")
    p.add_argument("--group", type=int, default=8, help="G continuations per branch point")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--only", nargs="*", default=None, help="run only configurations whose name contains one of these")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    res = run(args)
    table = markdown(res)
    print(table)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
