"""Imagination gap, agreement and World-Expert fidelity before/after GRPO, and the effect of a World-Expert refresh.

Given a policy before GRPO (`--before`, e.g. the SFT checkpoint, which is also the default simulator) and after
(`--after`, e.g. `runs/grpo/final`):

1. Paired verification of each policy (same seeds really and in imagination with the simulator's frozen World
   Expert): confusion matrix, agreement, imagination gap, reward-model precision/recall on real frames (with
   `--reward_model_path`), open-loop World-Expert PSNR per chunk vs the copy-first-frame baseline.
2. Refresh: with the `--after` policy, gather real episodes on seeds A, fine-tune a copy of the simulator's World
   Expert on them (`refresh_world_model`, `--refresh_steps` steps), then verify on fresh seeds B with the original
   and with the refreshed simulator (same seeds, same real episodes): gap and fidelity before vs after the refresh.

Usage (default preset tasks; results as JSON and a markdown table):

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/bench_verify.py \
        --before ~/.cache/wlarl/bootstrap/default-<key>/policy/final --after runs/grpo/final \
        --reward_model_path ~/.cache/wlarl/bootstrap/default-<key>/reward/final \
        --episodes_per_task 4 --output runs/bench_verify.json

`--after` may be omitted (only the "before" column and the refresh with the `--before` policy).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from rollout.refresh import refresh_world_model  # noqa: E402
from rollout.verify import make_imagine_fn, paired_verification  # noqa: E402
from wlarl.utils.stats import nanmean  # noqa: E402

KEYS = (
    "verify/real_success", "verify/imagined_success", "verify/imagination_gap", "verify/agreement",
    "verify/tp", "verify/fp", "verify/fn", "verify/tn", "verify/reward_precision", "verify/reward_recall",
)  # fmt: skip


def _default_tasks() -> list[str]:
    preset = yaml.safe_load((ROOT / "recipes" / "configs" / "default.yaml").read_text())
    return list(preset.get("evaluate", {}).get("tasks") or preset["collect_demos"]["tasks"])


def _verify(policy, world, args, seed, scorer) -> dict:
    horizon = args.horizon
    engine = ImaginationEngine(world, horizon=horizon, success_threshold=args.success_threshold)
    out = paired_verification(
        policy, make_imagine_fn(engine, horizon=horizon), args.tasks, args.episodes_per_task, seed=seed, world=world,
        success_scorer=scorer, num_chunks=args.chunks, num_videos=0, num_workers=args.num_workers,
        max_episode_steps=horizon * int(world.config.chunk_size), env_kwargs={"image_size": args.image_size},
        timeout_s=args.timeout_s,
    )  # fmt: skip
    return out


def _row(out: dict) -> dict:
    return {k: out.get(k, float("nan")) for k in KEYS} | {
        k: v for k, v in out.items() if k.startswith(("verify/world_", "verify/copy_")) and isinstance(v, float)
    }


def _f(x) -> str:
    return (
        "–"
        if x is None or (isinstance(x, float) and math.isnan(x))
        else (f"{x:.3f}" if isinstance(x, float) else str(x))
    )


def markdown(res: dict) -> str:
    cols = [c for c in ("before", "after") if c in res["policies"]]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k in KEYS:
        lines.append(f"| {k} | " + " | ".join(_f(res["policies"][c].get(k)) for c in cols) + " |")
    lines += [
        "",
        "| chunk k | "
        + " | ".join(
            f"world PSNR ({c}) | copy PSNR ({c}) | world PSNR changed ({c}) | copy PSNR changed ({c})" for c in cols
        )
        + " |",
    ]
    lines.append("|---|" + "---|---|---|---|" * len(cols))
    for k in range(1, res["args"]["chunks"] + 1):
        cells = []
        for c in cols:
            p = res["policies"][c]
            cells += [
                _f(p.get(f"verify/{n}_chunk{k}"))
                for n in ("world_psnr", "copy_psnr", "world_psnr_changed", "copy_psnr_changed")
            ]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    r = res.get("refresh")
    if r:
        lines += [
            "",
            f"Refresh ({r['steps']} steps, lr {r['lr']}, {r['train_episodes']} real episodes, held-out seeds):",
            "",
            "| | imagination gap | agreement | world PSNR | world PSNR changed | latent MSE |",
            "|---|---|---|---|---|---|",
        ]
        for when in ("before", "after"):
            m = r[when]
            lines.append(
                f"| {when} refresh | {_f(m['verify/imagination_gap'])} | {_f(m['verify/agreement'])} | "
                f"{_f(m['verify/world_psnr'])} | {_f(m['verify/world_psnr_changed'])} | {_f(m['verify/world_latent_mse'])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="policy before GRPO (SFT checkpoint)")
    ap.add_argument("--after", default=None, help="policy after GRPO")
    ap.add_argument("--simulator_path", default=None, help="World Expert used to imagine (default: --before)")
    ap.add_argument("--reward_model_path", default=None, help="success classifier checked on real frames")
    ap.add_argument("--tasks", nargs="+", default=None, help="default: the default preset's evaluate tasks")
    ap.add_argument("--episodes_per_task", type=int, default=4)
    ap.add_argument("--horizon", type=int, default=8, help="T chunks per episode (real episodes get T·H steps)")
    ap.add_argument("--chunks", type=int, default=4, help="chunks of open-loop fidelity")
    ap.add_argument("--success_threshold", type=float, default=0.5)
    ap.add_argument("--image_size", type=int, default=0, help="0: the policy's")
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--timeout_s", type=float, default=3600)
    ap.add_argument("--refresh_steps", type=int, default=100, help="0 skips the refresh experiment")
    ap.add_argument("--refresh_lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=20_000)
    ap.add_argument("--output", default=None, help="JSON file for the results (markdown goes to stdout)")
    args = ap.parse_args()
    args.tasks = args.tasks or _default_tasks()

    from wlarl.models.wla import WLAPolicy

    t0 = time.time()
    world = freeze_snapshot(WLAPolicy.from_pretrained(args.simulator_path or args.before))
    args.image_size = args.image_size or int(world.config.image_size)
    scorer = None
    if args.reward_model_path:
        from rewards.success_classifier import load_success_classifier

        scorer = load_success_classifier(args.reward_model_path).predict_proba
    res: dict = {"args": vars(args), "policies": {}}
    policies = {"before": args.before, **({"after": args.after} if args.after else {})}
    loaded = {}
    for name, path in policies.items():
        policy = WLAPolicy.from_pretrained(path).eval()
        loaded[name] = policy
        out = _verify(policy, world, args, args.seed, scorer)
        res["policies"][name] = _row(out)
        print(f"[{time.time() - t0:.0f}s] {name}: gap {_f(out['verify/imagination_gap'])} "
              f"agreement {_f(out['verify/agreement'])}", flush=True)  # fmt: skip

    if args.refresh_steps > 0:
        policy = loaded.get("after", loaded["before"])
        gather = _verify(policy, world, args, args.seed + 1000, None)  # seeds A: training episodes for the refresh
        held_before = _verify(policy, world, args, args.seed + 2000, scorer)  # seeds B, original simulator
        refreshed = copy.deepcopy(world)
        fit = refresh_world_model(refreshed, gather["real"].episodes, steps=args.refresh_steps, lr=args.refresh_lr,
                                  num_chunks=args.chunks)  # fmt: skip
        held_after = _verify(policy, refreshed, args, args.seed + 2000, scorer)  # seeds B, refreshed simulator
        res["refresh"] = {
            "steps": args.refresh_steps,
            "lr": args.refresh_lr,
            "train_episodes": len(gather["real"].episodes),
            "loss_first": fit["loss_first"],
            "loss_last": fit["loss_last"],
            "train_fidelity_before": nanmean(fit["before"]["world_psnr"]),
            "train_fidelity_after": nanmean(fit["after"]["world_psnr"]),
            "before": _row(held_before)
            | {
                k: held_before[k]
                for k in ("verify/world_psnr", "verify/world_psnr_changed", "verify/world_latent_mse")
            },
            "after": _row(held_after)
            | {
                k: held_after[k] for k in ("verify/world_psnr", "verify/world_psnr_changed", "verify/world_latent_mse")
            },
        }
    res["wall_s"] = time.time() - t0
    md = markdown(res)
    print(md)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
