"""Does the World Expert's prediction depend on the action? Action-conditioned fidelity within a group
(`rollout.action_fidelity`), and what a state reward's ranking would be with a state model in its place.

B branch points inside real episodes (demonstrations: middle and late, late = h chunks before the first success; and,
with --policy_episodes, the same positions inside the policy's own real episodes), G chunk sequences of h chunks
sampled by the policy in imagination, the same executed actions replayed open-loop in Meta-World from the rebuilt
states. For the World Expert's predicted full states, and for a dynamics ensemble rolled open-loop over the same
actions (`recipes/train_dynamics_ensemble.py`; trained here on the bootstrap's demonstrations, plus --ensemble_extra
datasets, when none is given), it
reports per chunk the within-group R² / correlation / spread ratio of hand and object positions against reality, and
the sign agreement of `state_value` / `state_progress` advantages with real success when scored on each.

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/bench_action_fidelity.py \\
        --bootstrap ~/.cache/wlarl/bootstrap/default-<key> --output runs/bench_action_fidelity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rewards import build_reward_scorer  # noqa: E402
from rewards.dynamics_ensemble import ChunkPairs, load_dynamics_ensemble, train_dynamics_ensemble  # noqa: E402
from rewards.state_reward import load_state_reward  # noqa: E402
from rollout.action_fidelity import QUANTITIES, fidelity_table, open_loop_full_states  # noqa: E402
from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from rollout.ranking import (  # noqa: E402
    alive_through_first_success,
    branch_points,
    replay_group,
    within_group_agreement,
)
from rollout.sims.metaworld import MetaWorldEnv  # noqa: E402
from wlarl.algorithms import grpo  # noqa: E402
from wlarl.data.episodes import load_episodes  # noqa: E402
from wlarl.models.wla import WLAPolicy  # noqa: E402
from wlarl.types import Observation, Trajectories  # noqa: E402

REWARDS = ("state_value", "state_progress")
BRANCH_EPISODE_OFFSET = 10_000_000  # episode ids of branch rows, clear of every dataset's


def with_full_states(traj: Trajectories, full: np.ndarray, state_model) -> Trajectories:
    """The imagined rows with other full states [N, T, F]; `alive` and success recomputed by the state model."""
    f = torch.as_tensor(full, dtype=torch.float32)
    N, T, F = f.shape
    probs, _ = state_model.predict(f.reshape(N * T, F), [t for t in traj.task_names for _ in range(T)])
    ok = (probs.reshape(N, T) >= state_model.threshold).cummax(dim=1).values
    return dataclasses.replace(traj, full_states=f, alive=alive_through_first_success(ok), success=ok[:, -1].clone())


def advantages(scorer, traj, G: int) -> np.ndarray:
    rewards = scorer(traj, trainer_state=None)
    adv, _ = grpo.compute_advantages(rewards.per_function, rewards.weights, G, "sum_then_normalize", "group")
    return adv.reshape(-1, G).numpy()


def imagine_and_replay(policy, engine, points, G, h, H, temperature, seed, env_kwargs):
    """G imagined chunk sequences from every branch point and their open-loop real replays.

    Returns (imagined Trajectories, executed actions [B, G, h, H, A], replays, start full states [B, F])."""
    B = len(points)
    starts = Observation.from_dicts([bp.observation for bp in points])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        imagined = engine.rollout(policy, starts, group_size=G, temperature=temperature, horizon=h, generator=gen)
    actions = imagined.actions.numpy().reshape(B, G, h, H, -1)
    envs: dict = {}
    replays = []
    for i, bp in enumerate(points):
        key = (bp.task_name, bp.step + h * H)
        if key not in envs:
            envs[key] = MetaWorldEnv(bp.task_name, render_images=False, max_episode_steps=key[1], **env_kwargs)
        replays.append(replay_group(envs[key], bp, actions[i]))
    for env in envs.values():
        env.close()
    start_full = np.stack([np.asarray(bp.observation["full_state"], np.float32) for bp in points])  # [B, F]
    return imagined, actions, replays, start_full


def branch_pairs(points, actions: np.ndarray, replays, start_full: np.ndarray, H: int) -> ChunkPairs:
    """The replays' one-chunk transitions as dynamics training pairs: G different chunks from each same state (one
    episode id per row)."""
    B, G, h = actions.shape[:3]
    real = np.stack([r["full_states"] for r in replays])  # [B, G, h, F]
    before = np.concatenate([np.repeat(start_full[:, None, None], G, axis=1), real[:, :, :-1]], axis=2)
    return ChunkPairs(
        full_states=before.reshape(B * G * h, -1).astype(np.float32),
        actions=actions.reshape(B * G * h, H, -1).astype(np.float32),
        next_full_states=real.reshape(B * G * h, -1).astype(np.float32),
        task_names=[bp.task_name for bp in points for _ in range(G * h)],
        episode=(BRANCH_EPISODE_OFFSET + np.arange(B * G)).repeat(h).astype(np.int64),
        step=np.tile(np.arange(h) * H, B * G).astype(np.int64),
    )


def run(args) -> dict:
    b = Path(args.bootstrap)
    torch.manual_seed(args.seed)
    policy = WLAPolicy.from_pretrained(args.policy_path or b / "policy" / "final").eval()
    world = freeze_snapshot(policy)
    demos = load_episodes(b / "data")
    H, h, G = int(policy.config.chunk_size), args.horizon, args.group
    state_model = load_state_reward(args.state_reward_path or b / "state_reward")
    sources = [("demo", demos, True)]
    if args.policy_episodes:
        sources.append(("policy", load_episodes(args.policy_episodes), False))
    points = []
    for name, ds, successful_only in sources:
        points += branch_points(
            ds, positions=args.positions, late_steps=h * H, per_task=args.per_task, successful_only=successful_only,
            source=name,
        )  # fmt: skip
    B = len(points)
    env_kwargs = {"image_size": int(policy.config.image_size)}
    if "camera" in demos.meta:
        env_kwargs["camera"] = demos.meta["camera"]
    t0 = time.perf_counter()
    if args.ensemble_path:
        ens = load_dynamics_ensemble(args.ensemble_path)
        ens_metrics = {}
    else:
        ens, ens_metrics = train_dynamics_ensemble(
            [str(b / "data"), *args.ensemble_extra],
            horizon=H, steps=args.ensemble_steps, seed=args.seed, progress_bar=False,
        )  # fmt: skip
    t_ens = time.perf_counter() - t0
    engine = ImaginationEngine(
        world, horizon=h, success_signal="state", reencode=True,
        state_success=lambda fs, tn: state_model.predict(fs, tn)[0], state_threshold=state_model.threshold,
    )  # fmt: skip
    models: dict[str, Any] = {"ensemble": ens}
    if args.branch_train_from:  # counterfactual branches as training data, from other episodes than those measured
        t0 = time.perf_counter()
        train_points = branch_points(
            load_episodes(args.branch_train_from), positions=args.positions, late_steps=h * H,
            per_task=args.branch_train_per_task, successful_only=False, source="branch_train",
        )  # fmt: skip
        _, tr_actions, tr_replays, tr_start = imagine_and_replay(
            policy, engine, train_points, G, h, H, args.temperature, args.seed + 1, env_kwargs
        )  # fmt: skip
        extra = branch_pairs(train_points, tr_actions, tr_replays, tr_start, H)
        models["ensemble_branches"], _ = train_dynamics_ensemble(
            [str(b / "data"), *args.ensemble_extra], horizon=H, steps=args.ensemble_steps, seed=args.seed,
            progress_bar=False, extra_pairs=extra,
        )  # fmt: skip
        branch_info = {"points": len(train_points), "pairs": len(extra), "seconds": time.perf_counter() - t0}
    else:
        branch_info = None
    t0 = time.perf_counter()
    imagined, actions, replays, start_full = imagine_and_replay(
        policy, engine, points, G, h, H, args.temperature, args.seed, env_kwargs
    )  # fmt: skip
    t_replay = time.perf_counter() - t0
    real_full = np.stack([r["full_states"] for r in replays])  # [B, G, h, F]
    predicted = {"world_expert": imagined.full_states.numpy().reshape(B, G, h, -1)}
    for name, model in models.items():
        predicted[name] = open_loop_full_states(
            model.predict_next, np.repeat(start_full, G, axis=0), actions.reshape(B * G, h, H, -1),
            imagined.task_names,
        ).reshape(B, G, h, -1)  # fmt: skip
    success = np.stack([r["success"] for r in replays]).astype(np.float64)  # [B, G]
    shaped = np.stack([r["shaped_return"] for r in replays]).astype(np.float64)
    by_source = {}
    for src in sorted({bp.source for bp in points}) + ["all"]:
        idx = [i for i, bp in enumerate(points) if src in ("all", bp.source)]
        by_source[src] = {
            "points": len(idx),
            "real_success": float(success[idx].mean()),
            "models": {m: fidelity_table(p[idx], real_full[idx], start_full[idx]) for m, p in predicted.items()},
        }
    # state rewards' advantages on the World Expert's, the ensemble's and the real full states
    trajs = {"world_expert": imagined}
    for name in models:
        trajs[name] = with_full_states(imagined, predicted[name].reshape(B * G, h, -1), state_model)
    trajs["real"] = with_full_states(imagined, real_full.reshape(B * G, h, -1), state_model)
    agreement = {}
    for rname in REWARDS:
        scorer = build_reward_scorer([rname], state_reward_path=str(args.state_reward_path or b / "state_reward"))
        for src, traj in trajs.items():
            adv = advantages(scorer, traj, G)
            for src_pts in sorted({bp.source for bp in points}) + ["all"]:
                idx = [i for i, bp in enumerate(points) if src_pts in ("all", bp.source)]
                agreement[f"{rname}/{src}/{src_pts}"] = {
                    "vs_success": within_group_agreement(adv[idx], success[idx]),
                    "vs_return": within_group_agreement(adv[idx], shaped[idx]),
                }
    return {
        "args": vars(args),
        "points": B,
        "group": G,
        "horizon": h,
        "fidelity": by_source,
        "agreement": agreement,
        "imagined_success": {k: float(t.success.float().mean()) for k, t in trajs.items() if k != "real"},
        "branch_training": branch_info,
        "real_success": float(success.mean()),
        "ensemble_heldout": {k: v for k, v in ens_metrics.items() if k.startswith("heldout/")},
        "seconds": {"ensemble": t_ens, "imagine_and_replay": t_replay},
    }


def markdown(res: dict) -> str:
    lines = []
    h = res["horizon"]
    for src, out in res["fidelity"].items():
        lines += [
            f"\n**{src}** branch points ({out['points']}, G = {res['group']}, real success of the rows "
            f"{out['real_success']:.2f})\n",
            "| model | quantity | chunk | within R² | within corr | spread ratio | error (cm) | copy error (cm) | "
            "group-mean error (cm) | real spread (cm) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for model, table in out["models"].items():
            for q in QUANTITIES:
                for k in sorted({1, h}):
                    m = table[f"{q}/chunk{k}"]
                    lines.append(
                        f"| {model} | {q} | {k} | {m['within_r2']:.2f} | {m['within_corr']:.2f} | "
                        f"{m['spread_ratio']:.2f} | {100 * m['error']:.1f} | {100 * m['copy_error']:.1f} | "
                        f"{100 * m['group_mean_error']:.1f} | {100 * m['real_spread']:.1f} |"
                    )
    lines += [
        "\n| reward | full states from | points | sign agreement vs success (groups) | Spearman | vs shaped return |",
        "|---|---|---|---|---|---|",
    ]
    for key, a in res["agreement"].items():
        r, src, pts = key.split("/")
        s, ret = a["vs_success"], a["vs_return"]
        lines.append(
            f"| {r} | {src} | {pts} | {s['sign_agreement']:.2f} ({int(s['groups'])}) | {s['spearman']:.2f} | "
            f"{ret['sign_agreement']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True, help="a bootstrap folder: policy/, data/, state_reward/")
    p.add_argument("--policy_path", default=None, help="another policy (default: the bootstrap's)")
    p.add_argument("--state_reward_path", default=None, help="another state reward model (default: the bootstrap's)")
    p.add_argument("--policy_episodes", default=None, help="episodes of the policy (collect_policy_episodes.py)")
    p.add_argument("--ensemble_path", default=None, help="a trained dynamics ensemble (default: train one here)")
    p.add_argument(
        "--ensemble_extra",
        nargs="*",
        default=[],
        help="more episode datasets to train the ensemble on, beside the demonstrations (e.g. other policy "
        "episodes than those branched from)",
    )
    p.add_argument("--ensemble_steps", type=int, default=2000)
    p.add_argument(
        "--branch_train_from",
        default=None,
        help="episodes to branch from for training data: G imagined chunk sequences per branch point "
        "replayed in the real simulator train a third model, 'ensemble_branches' (demos + --ensemble_extra "
        "+ these counterfactual branches)",
    )
    p.add_argument("--branch_train_per_task", type=int, default=4)
    p.add_argument("--positions", nargs="+", default=["middle", "late"])
    p.add_argument("--per_task", type=int, default=2, help="episodes per task and source to branch from")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    res = run(args)
    table = markdown(res)
    print(table)
    print(json.dumps({k: res[k] for k in ("seconds", "imagined_success", "real_success", "branch_training")}))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=float))
        out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
