"""The ranking benchmark: does each reward order a group's samples as the real simulator does?

Branch points inside real episodes (demonstrations of the dataset, and with `--policy_episodes` the current policy's
own real-engine rollouts), early, middle and late (late: `--late_chunks` chunks before the first success); each is
rebuilt in Meta-World (seeded reset + recorded actions, checked bitwise against the recorded state). From each, the
policy samples G continuations of h chunks in imagination (the frozen World Expert predicts the frames), and the same
executed actions are replayed open-loop in the real simulator. Every reward is scored twice — on the real replay (its
ceiling: what it could tell GRPO with a perfect World Expert) and on the imagined rows (what GRPO in imagination
receives) — and compared within each group with the real outcome: success within the h chunks and the simulator's
shaped return. With `--state_reward_path` the state rewards (`state_success`, `state_progress`, and `state_value` when
the model has a value head) are scored too: on the replay's real full states, and on the World Expert's predicted
ones (a policy trained with `world_full_state`). A classifier trained with `--progress_head true` adds
`subgoal_progress` (its success, else 0.9 · its predicted progress). Weighted sums of rewards (`--combos`; by default
the default preset's own and each main reward + 0.05 `shaping`) are scored like one reward.

Usage (the default bootstrap; JSON and a markdown table):

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/bench_ranking.py \\
        --policy_path ~/.cache/wlarl/bootstrap/default-<key>/policy/final \\
        --dataset_path ~/.cache/wlarl/bootstrap/default-<key>/data \\
        --reward_model_path ~/.cache/wlarl/bootstrap/default-<key>/reward/final \\
        --episodes_per_task 2 --group 8 --chunks 3 --output runs/bench_ranking.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rewards import build_reward_scorer  # noqa: E402
from rewards.state_reward import load_state_reward  # noqa: E402
from rewards.success_classifier import load_success_classifier  # noqa: E402
from rollout.experts import SUBTASK_RULES  # noqa: E402
from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from rollout.ranking import (  # noqa: E402
    POSITIONS,
    branch_points,
    policy_branch_points,
    ranking_report,
    real_replay_trajectories,
    replay_group,
)
from rollout.real import reset_start_states  # noqa: E402
from rollout.real_engine import RealEngine  # noqa: E402
from rollout.sims.metaworld import MetaWorldEnv  # noqa: E402
from wlarl.data.episodes import load_episodes  # noqa: E402
from wlarl.models.wla import WLAPolicy  # noqa: E402
from wlarl.types import Observation  # noqa: E402

DEFAULT_REWARDS = ["subgoal_success", "predicted_success", "trajectory_success", "progress", "goal_similarity"]
STATE_REWARDS = ["state_success", "state_progress", "state_value"]  # state_value: models with a value head only
WITH_SHAPING = [
    "subgoal_success",
    "subgoal_progress",
    "state_success",
    "state_progress",
    "state_value",
]  # scored + 0.05 shaping too


def parse_combo(text: str) -> tuple[str, dict[str, float]]:
    """``name=fn:w,fn:w`` → (name, {fn: w}): a weighted sum of rewards, scored like one reward."""
    name, sep, body = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        parts = dict((fn, float(w)) for fn, w in (item.split(":") for item in body.split(",")))
    except ValueError:
        raise SystemExit(f"bench_ranking: --combos {text!r}: expected name=fn:weight,fn:weight") from None
    return name, parts


def default_combos(rewards: list[str]) -> list[str]:
    """The default preset's weighted reward (`default_preset`), and each main reward with the preset's 0.05 shaping."""
    preset = yaml.safe_load((ROOT / "recipes" / "configs" / "default.yaml").read_text())["grpo_world"]
    funcs, weights = preset["reward_funcs"], preset.get("reward_weights") or [1.0] * len(preset["reward_funcs"])
    combos = []
    if all(f in rewards for f in funcs):
        combos.append("default_preset=" + ",".join(f"{f}:{w}" for f, w in zip(funcs, weights)))
    preset_parts = dict(zip(funcs, map(float, weights)))
    for r in WITH_SHAPING:
        if r in rewards and {r: 1.0, "shaping": 0.05} != preset_parts:  # the preset's own is listed once
            combos.append(f"{r}+shaping={r}:1.0,shaping:0.05")
    return combos


def _state_rewards(state_reward_path: str) -> list[str]:
    """The state rewards a model scores: `state_value` needs its value head (trained with --value_head true)."""
    value_head = load_state_reward(state_reward_path).config.value_head
    return [r for r in STATE_REWARDS if value_head or r != "state_value"]


def _default_tasks() -> list[str]:
    preset = yaml.safe_load((ROOT / "recipes" / "configs" / "default.yaml").read_text())
    return list(preset.get("evaluate", {}).get("tasks") or preset["collect_demos"]["tasks"])


def _policy_points(policy, world, tasks, args, env_kwargs) -> list:
    """Branch points inside the current policy's own sampled real episodes (seeded resets 200000 + i)."""
    engine = RealEngine(
        world, chunk_size=policy.config.chunk_size, num_workers=args.num_workers, env_kwargs=env_kwargs
    )
    starts = reset_start_states(tasks, args.policy_episodes, env_kwargs=env_kwargs, seed=200_000)
    obs = Observation.from_dicts(starts)
    seeds = [int(s["seed"]) for s in starts]
    traj = engine.rollout(policy, obs, group_size=1, temperature=args.temperature, seeds=torch.as_tensor(seeds))
    return policy_branch_points(traj, seeds, positions=args.positions, late_chunks=args.late_chunks)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    policy = WLAPolicy.from_pretrained(args.policy_path).eval()
    world = freeze_snapshot(policy)
    episodes = load_episodes(args.dataset_path)
    tasks = args.tasks or _default_tasks()
    H = int(policy.config.chunk_size)
    env_kwargs = {"image_size": int(policy.config.image_size)}
    if "camera" in episodes.meta:
        env_kwargs["camera"] = episodes.meta["camera"]
    points = branch_points(
        episodes, positions=args.positions, late_steps=args.late_chunks * H, per_task=args.episodes_per_task, tasks=tasks
    )  # fmt: skip
    if args.policy_episodes:
        points += _policy_points(policy, world, tasks, args, env_kwargs)
    scorer = build_reward_scorer(
        args.rewards, reward_model_path=args.reward_model_path, dataset_path=args.dataset_path, policy=world,
        subtask_rules=SUBTASK_RULES, state_reward_path=args.state_reward_path,
        reward_kwargs=json.loads(args.reward_kwargs) if args.reward_kwargs else None,
    )  # fmt: skip
    found = scorer.find_success_classifier()
    classifier, threshold = found if found else (None, 0.5)
    engine = ImaginationEngine(
        world, horizon=args.chunks, success_signal="both" if classifier else "head", success_classifier=classifier,
        classifier_threshold=threshold,
    )  # fmt: skip
    combos = dict(parse_combo(c) for c in args.combos)
    missing = sorted({fn for parts in combos.values() for fn in parts} - set(scorer.names))
    if missing:
        raise SystemExit(
            f"bench_ranking: --combos use {missing}, which are not among the scored rewards {scorer.names}"
        )
    G = args.group
    gen = torch.Generator().manual_seed(args.seed)
    groups = []
    envs: dict[tuple[str, int], MetaWorldEnv] = {}
    t0 = time.perf_counter()
    for bp in tqdm(points, desc="bench_ranking", unit="group"):
        starts = Observation.from_dicts([bp.observation])
        with torch.no_grad():
            imagined = engine.rollout(policy, starts, group_size=G, temperature=args.temperature, generator=gen)
        steps = bp.step + args.chunks * H
        key = (bp.task_name, steps)
        if key not in envs:
            envs[key] = MetaWorldEnv(bp.task_name, render_images=False, max_episode_steps=steps, **env_kwargs)
        actions = imagined.actions.numpy().reshape(G, args.chunks, H, -1)
        replay = replay_group(envs[key], bp, actions)
        real = real_replay_trajectories(imagined, [replay])
        scores = {}
        for kind, traj in (("real", real), ("predicted", imagined)):
            if traj.full_states is None and any(r in STATE_REWARDS for r in args.rewards):
                raise ValueError(
                    f"bench_ranking: the {kind} rows carry no full states for {STATE_REWARDS}: use a policy whose "
                    "World Expert models them (sft_wla --world_full_state true)"
                )
            out = scorer(traj)
            for f, name in enumerate(out.names):
                scores[f"{name}@{kind}"] = out.per_function[:, f].numpy()
            for combo, parts in combos.items():  # a function that skips a row adds nothing, as in training
                scores[f"{combo}@{kind}"] = sum(w * np.nan_to_num(scores[f"{fn}@{kind}"]) for fn, w in parts.items())
        groups.append({"bp": bp, "replay": replay, "scores": scores, "imagined_success": imagined.success.numpy()})
    seconds = time.perf_counter() - t0

    def report(sel: list[dict]) -> dict:
        names = sel[0]["scores"].keys()
        scores = {n: np.stack([g["scores"][n] for g in sel]) for n in names}
        scores["imagined_success@predicted"] = np.stack([g["imagined_success"] for g in sel]).astype(float)
        outcomes = {
            "success": np.stack([g["replay"]["success"] for g in sel]).astype(float),
            "return": np.stack([g["replay"]["shaped_return"] for g in sel]).astype(float),
        }
        res = ranking_report(scores, outcomes, outcomes["success"].astype(bool))
        return {"groups": len(sel), "real_success": float(outcomes["success"].mean()), "rewards": res}

    slices = {"all": groups}
    for src in sorted({g["bp"].source for g in groups}):
        for pos in args.positions:
            sel = [g for g in groups if g["bp"].source == src and g["bp"].position == pos]
            if sel:
                slices[f"{src}/{pos}"] = sel
    for task in sorted({g["bp"].task_name for g in groups}):
        slices[f"task/{task}"] = [g for g in groups if g["bp"].task_name == task]
    return {
        "args": vars(args),
        "seconds": seconds,
        "env_steps": int(sum(g["bp"].step * G + G * args.chunks * H for g in groups)),
        "slices": {name: report(sel) for name, sel in slices.items()},
    }


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown(res: dict) -> str:
    lines = []
    for name, sl in res["slices"].items():
        lines.append(f"\n**{name}**: {sl['groups']} groups, real success of the rows {sl['real_success']:.2f}\n")
        lines.append("| reward @ frames | success: sign agreement | success: Spearman | groups | return: sign agreement "
                     "| return: Spearman | row AUROC |")  # fmt: skip
        lines.append("|---|---|---|---|---|---|---|")
        for rname, r in sorted(sl["rewards"].items()):
            lines.append(
                f"| {rname} | {_f(r['success/sign_agreement'])} | {_f(r['success/spearman'])} | "
                f"{int(r['success/groups'])} | {_f(r['return/sign_agreement'])} | {_f(r['return/spearman'])} | "
                f"{_f(r['auroc'])} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy_path", required=True)
    p.add_argument("--dataset_path", required=True)
    p.add_argument("--reward_model_path", default=None)
    p.add_argument(
        "--state_reward_path", default=None,
        help="a recipes/train_state_reward.py output: adds state_success, state_progress and, with a value head, "
        "state_value (scored @predicted when the World Expert models full states)",
    )  # fmt: skip
    p.add_argument(
        "--reward_kwargs", default=None,
        help='options of reward factories as JSON, e.g. \'{"state_progress": {"mode": "max"}}\'',
    )  # fmt: skip
    p.add_argument("--tasks", nargs="*", default=None, help="default: the default preset's tasks")
    p.add_argument("--rewards", nargs="+", default=DEFAULT_REWARDS)
    p.add_argument("--positions", nargs="+", default=list(POSITIONS), choices=POSITIONS)
    p.add_argument("--episodes_per_task", type=int, default=2, help="demonstrations per task")
    p.add_argument("--policy_episodes", type=int, default=0, help="the policy's own real episodes per task")
    p.add_argument("--group", type=int, default=8, help="G continuations per branch point")
    p.add_argument("--chunks", type=int, default=3, help="h chunks per continuation")
    p.add_argument("--late_chunks", type=int, default=3, help="a late branch point: chunks before the first success")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--num_workers", type=int, default=1, help="env workers of the policy's own rollouts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON path (the markdown table goes next to it as .md)")
    p.add_argument(
        "--combos", nargs="*", default=None,
        help="weighted sums scored like one reward, name=fn:w,fn:w (default: the default preset's reward and each "
        "main reward + 0.05 shaping); [] for none",
    )  # fmt: skip
    args = p.parse_args()
    if not args.reward_model_path:
        args.rewards = [r for r in args.rewards if r not in ("subgoal_success", "subgoal_progress")]
    elif (
        "subgoal_progress" not in args.rewards and load_success_classifier(args.reward_model_path).config.progress_head
    ):
        args.rewards.append("subgoal_progress")  # a classifier trained with --progress_head true
    if args.state_reward_path:
        args.rewards += [r for r in _state_rewards(args.state_reward_path) if r not in args.rewards]
    if args.combos is None:
        args.combos = default_combos(args.rewards + ["shaping"])
    used = [fn for c in args.combos for fn in parse_combo(c)[1]]
    args.rewards += [fn for fn in dict.fromkeys(used) if fn not in args.rewards]
    res = run(args)
    table = markdown(res)
    print(table)
    print(f"\n{res['env_steps']} env steps, {res['seconds']:.0f} s")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str))
        out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
