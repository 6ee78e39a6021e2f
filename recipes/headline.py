"""The headline: the base SFT policy, GRPO in the real simulator, and wlarl, at the same real training budget.

    python recipes/headline.py                                   # recipes/configs/headline.yaml
    python recipes/headline.py --output_dir runs/headline_s7 --seed 7 --docs_dir docs/headline
    python recipes/headline.py --config headline_p1280 --bootstrap many_goals --output_dir runs/headline_many_goals

One command runs the whole comparison on the preset's cached bootstrap (demos → SFT → reward models, built on first
use):

1. arm ``real``: GRPO in the real simulator (the control; the simulator's own success is the reward);
2. arm ``wlarl``: GRPO in the policy's World Expert, branched from real states, with co-evolution rounds.

Each arm is one ``accelerate launch recipes/grpo_world.py`` with the bootstrap preset's ``grpo_world`` section, the
headline's shared settings (seed, evaluation) and the arm's overrides; its output_dir is ``<output_dir>/<arm>``. The
first arm evaluates the base policy at step 0 (greedy, ``eval_episodes_per_task`` per task, seeds never used in
training: a seed that resets a demonstration of the bootstrap's dataset is an error); every arm evaluates its final
policy on the same seeds. An arm whose final evaluation is on record is not run again, so an interrupted headline
resumes where it stopped.

Then ``<output_dir>`` holds ``results.json``, ``headline.md`` (the table: real success with 95 % Wilson intervals and
the verdict against the base, real training episodes, imagined success and gap, advantage agreement, wall time; and
per task) and the plots ``headline_success.png`` (real and imagined success vs real training episodes),
``headline_rounds.png`` (gap and advantage agreement vs step, rounds marked), ``headline_tasks.png`` (per task) and
``headline_strip.png`` (one branch: real frames above the World Expert's). ``--docs_dir`` copies them there.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPES))

import grpo_world  # noqa: E402

from wlarl.cli import load_section, resolve_preset  # noqa: E402
from wlarl.configs import GRPOWorldConfig  # noqa: E402
from wlarl.utils.runs import (  # noqa: E402
    budget_at,
    eval_rows,
    eval_tasks,
    fmt_ci,
    intervals_apart,
    last_value,
    read_metrics,
    series,
    verdict,
)

logger = logging.getLogger("wlarl.headline")
HEADLINE_KEYS = {"bootstrap", "output_dir", "seed", "eval_episodes_per_task", "accelerate_config", "arms"}
# set by the headline for every arm (its paths and evaluation); an arm may not override them
MANAGED = {"output_dir", "policy_path", "dataset_path", "reward_model_path", "state_reward_path", "seed",
           "eval_episodes_per_task", "eval_at_start", "resume_from_checkpoint"}  # fmt: skip
ARM_TITLES = {"real": "GRPO in the real simulator", "wlarl": "wlarl: imagination + co-evolution rounds"}


def load_headline(path_or_name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The ``headline`` settings and the arms' overrides of a headline preset, checked against GRPOWorldConfig."""
    path = resolve_preset(path_or_name)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict) or not isinstance(data.get("headline"), dict):
        raise ValueError(f"headline config {path}: expected a mapping with a 'headline' section")
    head = dict(data["headline"])
    unknown = sorted(set(head) - HEADLINE_KEYS)
    if unknown:
        raise ValueError(
            f"headline config {path} [headline]: unknown key(s) {unknown}; expected {sorted(HEADLINE_KEYS)}"
        )
    arms = head.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ValueError(f"headline config {path}: 'headline.arms' must map arm names to grpo_world overrides")
    known = {f.name for f in GRPOWorldConfig.__dataclass_fields__.values()}
    for name, over in arms.items():
        over = over or {}
        if not isinstance(over, dict):
            raise ValueError(f"headline config {path}: arm {name!r} must be a mapping of grpo_world fields")
        bad = sorted(set(over) - known)
        if bad:
            raise ValueError(f"headline config {path}: arm {name!r} has unknown grpo_world field(s) {bad}")
        managed = sorted(set(over) & MANAGED)
        if managed:
            raise ValueError(f"headline config {path}: arm {name!r} sets {managed}, which the headline sets itself")
        arms[name] = over
    head.setdefault("bootstrap", "default")
    head.setdefault("output_dir", "runs/headline")
    head.setdefault("seed", 42)
    head.setdefault("eval_episodes_per_task", 50)
    head.setdefault("accelerate_config", "cpu_1proc.yaml")
    return head, arms


def arm_config(head: dict[str, Any], over: dict[str, Any], paths: dict[str, str], out: Path, first: bool) -> dict:
    """The ``grpo_world`` section of one arm: the bootstrap preset's, then the headline's settings, then the arm's."""
    base = load_section(head["bootstrap"], "grpo_world")
    if over.get("engine") == "real" and "reward_funcs" not in over:
        # the control's reward is the simulator's own success (grpo_world's default for the real engine)
        for k in ("reward_funcs", "reward_weights", "reward_kwargs"):
            base.pop(k, None)
    elif "reward_funcs" in over and "reward_weights" not in over:
        # the preset's weights belong to the preset's functions (as on grpo_world's command line): 1.0 each
        base.pop("reward_weights", None)
    max_steps = int(over.get("max_steps", base.get("max_steps", 40)))
    cfg = {
        **base,
        # evaluation at the end only (and at the start for the first arm); no periodic verification or images
        "eval_steps": max_steps, "save_steps": max_steps, "verify_steps": 0, "log_image_steps": 0,
        "keep_best_real": False,
        **over,
        "output_dir": str(out), "seed": int(head["seed"]), "eval_episodes_per_task": int(head["eval_episodes_per_task"]),
        "eval_at_start": bool(first),
        **{k: v for k, v in paths.items() if k in ("policy_path", "dataset_path", "reward_model_path",
                                                     "state_reward_path") and v},
    }  # fmt: skip
    return cfg


def check_eval_seeds(dataset_path: str, seed: int, episodes_per_task: int) -> None:
    """Raise when an evaluation seed (``seed + e``) resets an episode of the training dataset for the same task: the
    headline's claims are on seeds never used in training."""
    from rollout.real import episode_seeds
    from wlarl.data import load_episodes, seeds_by_task

    evaluated = set(episode_seeds(episodes_per_task, seed))  # the evaluators' seeds: seed + e
    clashes = {t: sorted(s & evaluated) for t, s in seeds_by_task(load_episodes(dataset_path)).items()}
    clashes = {t: v for t, v in clashes.items() if v}
    if clashes:
        shown = "; ".join(f"{t}: {v[:5]}{' …' if len(v) > 5 else ''} ({len(v)} seeds)" for t, v in clashes.items())
        raise ValueError(
            f"headline: evaluation seeds {seed}..{seed + episodes_per_task - 1} also reset demonstrations of the "
            f"training dataset {dataset_path} ({shown}); evaluate on unseen seeds: change --seed, or collect the "
            "demonstrations with a collect_demos seed clear of them"
        )


def arm_done(out: Path, max_steps: int) -> bool:
    """Whether an arm finished: its final evaluation (at `max_steps`) is in its metrics."""
    if not (out / "metrics.jsonl").is_file():
        return False
    return any(int(r.get("step", -1)) == max_steps for r in eval_rows(read_metrics(out)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_arm(name: str, cfg: dict, out: Path, accelerate_config: str) -> None:
    if out.exists():
        # an interrupted arm starts again from its beginning, so that its metrics and rounds are of one run
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg_path = out.parent / f"{name}.yaml"
    tmp = cfg_path.with_name(cfg_path.name + ".tmp")
    tmp.write_text(yaml.safe_dump({"grpo_world": cfg}, sort_keys=False))
    tmp.replace(cfg_path)
    accel = Path(accelerate_config)
    if not accel.is_file():
        accel = RECIPES / "configs" / "accelerate_configs" / accelerate_config
    if not accel.is_file():
        raise FileNotFoundError(f"headline: accelerate config {accelerate_config!r} not found (a path, or a file name "
                                f"under {RECIPES / 'configs' / 'accelerate_configs'})")  # fmt: skip
    args = ["-m", "accelerate.commands.launch", "--config_file", str(accel), "--main_process_port",
            str(_free_port()), str(RECIPES / "grpo_world.py"), "--config", str(cfg_path)]  # fmt: skip
    grpo_world._run_stage(args, out.parent / f"{name}.log", label=f"headline arm {name}")


# --- the report ----------------------------------------------------------------------------------------------------
def summarize(name: str, out: Path) -> dict[str, Any]:
    rows = read_metrics(out)
    evals = eval_rows(rows)
    if not evals:
        raise ValueError(f"headline: arm {name} ({out}) has no evaluation in its metrics")
    after = evals[-1]
    imagined = series(rows, "rollout/imagined_success_all_rows")[1]
    agree = series(rows, "verify/advantage_agreement")[1]
    gap = series(rows, "verify/agreement_gap")[1]
    return {
        "name": name,
        "output_dir": str(out),
        "first_eval": evals[0] if int(evals[0].get("step", -1)) == 0 else None,
        "final_eval": after,
        "real_train_episodes": last_value(rows, "budget/real_train_episodes") or 0.0,
        "real_train_env_steps": last_value(rows, "budget/real_train_env_steps") or 0.0,
        "real_eval_episodes": last_value(rows, "budget/real_eval_episodes") or 0.0,
        "imagined_success_last": imagined[-1] if imagined else None,
        "advantage_agreement": agree,
        "agreement_gap": gap,
        "wall_s": last_value(rows, "train_runtime"),
        "train_tasks": _train_tasks(out),
    }


def trained_on(trained: list[str], evaluated: list[str]) -> str:
    """A legend suffix for an arm's training curves, which cover only the tasks it trained on: " (a, b only)" where
    those are fewer than the tasks evaluated, else ""."""
    trained = [t for t in trained if t in evaluated]
    return f" ({', '.join(trained)} only)" if trained and len(trained) < len(evaluated) else ""


def _train_tasks(out: Path) -> list[str]:
    """The tasks an arm trained on (`grpo_world.tasks` in its saved config.json); empty: all of its dataset's."""
    path = Path(out) / "config.json"
    return list(json.loads(path.read_text()).get("tasks") or []) if path.is_file() else []


def _num(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(arms: dict[str, dict[str, Any]], seed: int, episodes_per_task: int) -> tuple[dict[str, Any], str]:
    """results.json's content and headline.md's table, from the arms' summaries."""
    first = next((a["first_eval"] for a in arms.values() if a["first_eval"] is not None), None)
    if first is None:
        raise ValueError("headline: no arm evaluated the base policy at step 0 (the first arm must)")
    key = "eval/real_success"
    lines = [
        f"Greedy real success, {episodes_per_task} evaluation episodes per task on seeds never used in training "
        f"(seed {seed}); 95 % Wilson intervals, 'no measurable difference' where they overlap the base's.",
        "",
        "| | real train episodes (env steps) | greedy real success | Δ vs base | imagined success (last step) | "
        "imagination gap (agreement rows) | advantage agreement (first → last) | wall min |",
        "|---|---|---|---|---|---|---|---|",
        f"| base SFT policy | 0 | {fmt_ci(first, key)} | | | | | |",
    ]
    results: dict[str, Any] = {"seed": seed, "base": {k: v for k, v in first.items() if k.startswith("eval/")}}
    for name, a in arms.items():
        after = a["final_eval"]
        agree = a["advantage_agreement"]
        agree_s = f"{agree[0]:.2f} → {agree[-1]:.2f}" if agree else "–"
        gap_s = _num(a["agreement_gap"][-1], "+.3f") if a["agreement_gap"] else "–"
        wall = a["wall_s"] / 60 if a["wall_s"] else None
        lines.append(
            f"| {ARM_TITLES.get(name, name)} | {a['real_train_episodes']:.0f} ({a['real_train_env_steps']:.0f}) | "
            f"{fmt_ci(after, key)} | {verdict(first, after, key)} | {_num(a['imagined_success_last'])} | {gap_s} | "
            f"{agree_s} | {_num(wall, '.1f')} |"
        )
        results[name] = {
            **{k: v for k, v in a.items() if k not in ("first_eval", "final_eval")},
            "final": {k: v for k, v in after.items() if k.startswith("eval/")},
            "delta": after[key] - first[key],
            "intervals_apart": intervals_apart(first, after, key),
        }
    tasks = eval_tasks(first)
    lines += ["", "| task | base | " + " | ".join(ARM_TITLES.get(n, n) for n in arms) + " |",
              "|---|---|" + "---|" * len(arms)]  # fmt: skip
    for t in tasks:
        k = f"eval/{t}/success"
        cells = []
        for a in arms.values():
            apart = intervals_apart(first, a["final_eval"], k)
            cells.append(f"{_num(a['final_eval'].get(k), '.2f')}" + (", apart" if apart else ""))
        lines.append(f"| {t} | {_num(first.get(k), '.2f')} | " + " | ".join(cells) + " |")
    return results, "\n".join(lines) + "\n"


def plot(arms: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """The headline's plots (PNG) into `out`; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency of the logging extra
        raise ImportError("headline plots need matplotlib: pip install -e .[logging]") from e
    written = []
    first = next(a["first_eval"] for a in arms.values() if a["first_eval"] is not None)
    palette = iter(["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    colors = {"real": "tab:blue", "wlarl": "tab:orange"}
    colors.update({n: next(palette, "tab:gray") for n in arms if n not in colors})
    key = "eval/real_success"

    def err(row: dict) -> list[list[float]]:
        return [[row[key] - row[f"{key}_ci_low"]], [row[f"{key}_ci_high"] - row[key]]]

    # legends sit right of the axes, where they cover no data however many arms there are
    outside = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}

    # 1. real (and imagined) success vs real training episodes
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.errorbar([0], [first[key]], yerr=err(first), fmt="ks", capsize=4, label="base, greedy (95 % CI)")
    evaluated = eval_tasks(first)
    for name, a in arms.items():
        c = colors.get(name)
        rows = read_metrics(a["output_dir"])
        after = a["final_eval"]
        p = a["real_train_episodes"]
        on = trained_on(a.get("train_tasks") or [], evaluated)
        ax.errorbar([p], [after[key]], yerr=err(after), fmt="o", color=c, capsize=4,
                    label=f"{ARM_TITLES.get(name, name)}, greedy")  # fmt: skip
        ax.plot([0, p], [first[key], after[key]], "-", color=c, alpha=0.4)
        sampled_key = "round/collected_success" if any("round/collected_success" in r for r in rows) else (
            "rollout/real_success_all_rows")  # fmt: skip
        steps, vals = series(rows, sampled_key)
        if vals:
            # a round's episodes count once collected; a rollout's at its step
            xs = [budget_at(rows, s) for s in steps]
            ax.plot(xs, vals, ":", marker=".", color=c, label=f"{name}: sampled real success while training{on}")
        steps, vals = series(rows, "rollout/imagined_success_all_rows")
        if vals:
            # the steps between two rounds share one budget: their mean, one point per budget
            at: dict[float, list[float]] = {}
            for s, v in zip(steps, vals):
                at.setdefault(budget_at(rows, s), []).append(v)
            ax.plot(list(at), [sum(v) / len(v) for v in at.values()], "--", marker="x", color=c, alpha=0.6,
                    label=f"{name}: imagined success, mean per budget (not success){on}")  # fmt: skip
    ax.set_xlabel("real training episodes")
    ax.set_ylabel(f"success rate ({len(evaluated)} tasks evaluated)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(**outside)
    ax.set_title("Real success against the real episodes it cost")
    fig.tight_layout()
    written.append(out / "headline_success.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 2. gap and advantage agreement vs step, rounds marked (arms that measured them)
    measured = {n: a for n, a in arms.items() if a["advantage_agreement"] or a["agreement_gap"]}
    if measured:
        fig, ax = plt.subplots(figsize=(10, 4))
        for name, a in measured.items():
            rows = read_metrics(a["output_dir"])
            for k, style, label in (("verify/advantage_agreement", "-o", "advantage agreement (chance 0.5)"),
                                    ("verify/advantage_agreement_ceiling", ":^", "agreement ceiling (real replay)"),
                                    ("verify/agreement_gap", "--s", "imagined − real success (gap)")):  # fmt: skip
                steps, vals = series(rows, k)
                if vals:
                    ax.plot(steps, vals, style, color=colors.get(name), alpha=0.9 if "-o" == style else 0.6,
                            label=f"{name}: {label}")  # fmt: skip
            for s in series(rows, "round/index")[0]:
                ax.axvline(s, color="grey", alpha=0.3, lw=1)
        ax.axhline(0.5, color="k", lw=0.5, alpha=0.5)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel("optimizer step (grey lines: co-evolution rounds)")
        ax.set_ylim(-0.6, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(**outside)
        ax.set_title("Does imagination point the way reality does?")
        fig.tight_layout()
        written.append(out / "headline_rounds.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # 3. per task
    tasks = eval_tasks(first)
    if tasks:
        fig, ax = plt.subplots(figsize=(11, 4))
        width = 0.8 / (1 + len(arms))
        for i, (label, row, c) in enumerate(
            [("base", first, "grey")]
            + [(ARM_TITLES.get(n, n), a["final_eval"], colors.get(n)) for n, a in arms.items()]
        ):
            ks = [f"eval/{t}/success" for t in tasks]
            vals = [row.get(k, float("nan")) for k in ks]
            lo = [max(0.0, v - row.get(f"{k}_ci_low", v)) for v, k in zip(vals, ks)]  # error bars must be ≥ 0
            hi = [max(0.0, row.get(f"{k}_ci_high", v) - v) for v, k in zip(vals, ks)]
            ax.bar([j + i * width for j in range(len(tasks))], vals, width, yerr=[lo, hi], capsize=2, color=c,
                   label=label)  # fmt: skip
        ax.set_xticks([j + width * len(arms) / 2 for j in range(len(tasks))])
        ax.set_xticklabels([t.removesuffix("-v3") for t in tasks], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("greedy real success")
        ax.set_ylim(0, 1.05)
        ax.legend(**outside)
        fig.tight_layout()
        written.append(out / "headline_tasks.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # 4. one strip of real vs imagined frames: the last one an arm's advantage agreement wrote
    # (the wlarl arm's when it wrote one, else any other arm's)
    ordered = sorted(arms, key=lambda n: n != "wlarl")
    strips = [sorted((Path(arms[n]["output_dir"]) / "agreement").glob("strip_step_*.png")) for n in ordered]
    strips = next((s for s in strips if s), [])
    if strips:
        written.append(out / "headline_strip.png")
        strip = plt.imread(strips[-1])  # float [2H + gap, ·, 3|4]: real row above predicted row, start frame first
        h = strip.shape[0]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * strip.shape[1] / (h / 2)), 3.6))
        ax.imshow(strip, interpolation="nearest")
        ax.set_yticks([h / 4, 3 * h / 4])
        ax.set_yticklabels(["real\n(Meta-World)", "imagined\n(World Expert)"], fontsize=8)
        n_tiles = round(strip.shape[1] / (h / 2))
        ax.set_xticks([(i + 0.5) * strip.shape[1] / n_tiles for i in range(n_tiles)])
        ax.set_xticklabels(["start"] + [f"chunk {i}" for i in range(1, n_tiles)], fontsize=8)
        ax.tick_params(length=0)
        step = strips[-1].stem.removeprefix("strip_step_").lstrip("0") or "0"
        ax.set_title(f"one branch at step {step}: the same actions, replayed in reality and imagined", fontsize=9)
        fig.tight_layout()
        fig.savefig(written[-1], dpi=150)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="headline", help="headline preset (a file, or a name under recipes/configs)")
    ap.add_argument("--output_dir", help="overrides headline.output_dir")
    ap.add_argument("--seed", type=int, help="overrides headline.seed (training and evaluation seeds)")
    ap.add_argument("--bootstrap", help="overrides headline.bootstrap (the preset that builds the base policy)")
    ap.add_argument("--arms", nargs="+", help="run only these arms (the first listed evaluates the base)")
    ap.add_argument("--docs_dir", help="also copy the plots and headline.md there")
    args = ap.parse_args(argv)
    head, arms = load_headline(args.config)
    if args.output_dir:
        head["output_dir"] = args.output_dir
    if args.seed is not None:
        head["seed"] = args.seed
    if args.bootstrap:
        head["bootstrap"] = args.bootstrap
    names = args.arms or list(arms)
    missing = [n for n in names if n not in arms]
    if missing:
        raise SystemExit(f"headline: unknown arm(s) {missing}; the config has {list(arms)}")
    out = Path(head["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    paths = grpo_world.bootstrap(head["bootstrap"])
    logger.info("headline: base policy %s", paths["policy_path"])
    check_eval_seeds(paths["dataset_path"], int(head["seed"]), int(head["eval_episodes_per_task"]))
    for i, name in enumerate(names):
        cfg = arm_config(head, arms[name], paths, out / name, first=i == 0)
        if arm_done(out / name, int(cfg["max_steps"])):
            logger.info("headline: arm %s finished before; not run again", name)
            continue
        run_arm(name, cfg, out / name, head["accelerate_config"])
    summaries = {n: summarize(n, out / n) for n in names}
    results, table = report(summaries, int(head["seed"]), int(head["eval_episodes_per_task"]))
    results["wall_s_total"] = time.time() - t0
    results["bootstrap"] = paths
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=float))
    tmp.replace(out / "results.json")
    (out / "headline.md").write_text(table)
    written = plot(summaries, out)
    if args.docs_dir:
        docs = Path(args.docs_dir)
        docs.mkdir(parents=True, exist_ok=True)
        for p in [*written, out / "headline.md"]:
            shutil.copyfile(p, docs / p.name)
    print(table)
    logger.info("headline: %s (%.1f min)", ", ".join(str(p) for p in [out / "headline.md", *written]),
                (time.time() - t0) / 60)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
