"""Markdown tables of GRPO runs from their `metrics.jsonl`: real success before/after against real training episodes.

    python benchmarks/grpo_runs_table.py runs/control_a runs/control_b [--baseline runs/control_a] [--names A B]

For each run: greedy (and sampled) real success at its first and last evaluation with 95 % Wilson intervals, the
difference with a verdict (intervals overlap → "no measurable difference"), the real training episodes and env steps it
used (`budget/real_train_*`), evaluation episodes apart, wall time, and the last training-step metrics that say how far
the policy moved (`policy/mean_shift`, `policy/action_std`). A run without an evaluation at step 0 (`eval_at_start`
False) takes its "before" from `--baseline`. A per-task table follows for every run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (is it a grpo_world output_dir?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evals(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("eval/real_success") is not None]


def fmt(r: dict, key: str) -> str:
    v = r.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    lo, hi = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{v:.3f}"


def verdict(before: dict, after: dict, key: str) -> str:
    b, a = before.get(key), after.get(key)
    if b is None or a is None:
        return "–"
    overlap = not (
        after[f"{key}_ci_low"] > before[f"{key}_ci_high"] or after[f"{key}_ci_high"] < before[f"{key}_ci_low"]
    )
    return f"{a - b:+.3f}" + (" (no measurable difference)" if overlap else " (intervals apart)")


def last(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return vals[-1] if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--names", nargs="*")
    ap.add_argument("--baseline", type=Path, help="run whose first evaluation is the 'before' of runs without one")
    args = ap.parse_args()
    names = args.names or [r.name for r in args.runs]
    base_eval = evals(read(args.baseline))[0] if args.baseline else None
    print("| run | real train episodes (env steps) | greedy before | greedy after | Δ greedy | sampled before | "
          "sampled after | eval episodes | wall min | mean shift | action std |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    per_task = []
    for name, run in zip(names, args.runs):
        rows = read(run)
        ev = evals(rows)
        if not ev:
            raise SystemExit(f"{run}: no evaluation rows")
        after = ev[-1]
        # "before" is the evaluation at step 0: the run's own, else the baseline run's (same policy and seeds)
        before = ev[0] if ev[0]["step"] == 0 and len(ev) > 1 else (base_eval or {})
        runtime = last(rows, "train_runtime")
        print(
            f"| {name} | {last(rows, 'budget/real_train_episodes') or 0:.0f} "
            f"({last(rows, 'budget/real_train_env_steps') or 0:.0f}) | {fmt(before, 'eval/real_success')} | "
            f"{fmt(after, 'eval/real_success')} | {verdict(before, after, 'eval/real_success')} | "
            f"{fmt(before, 'eval/real_success_sampled')} | {fmt(after, 'eval/real_success_sampled')} | "
            f"{last(rows, 'budget/real_eval_episodes') or 0:.0f} | "
            f"{(runtime or float('nan')) / 60:.1f} | {last(rows, 'policy/mean_shift') or float('nan'):.3f} | "
            f"{last(rows, 'policy/action_std') or float('nan'):.3f} |"
        )
        per_task.append((name, before, after))
    for name, before, after in per_task:
        tasks = sorted(k.split("/")[1] for k in after if k.startswith("eval/") and k.endswith("/success"))
        print(f"\n{name}, per task (greedy):\n")
        print("| task | before | after | Δ |")
        print("|---|---|---|---|")
        for t in tasks:
            key = f"eval/{t}/success"
            print(f"| {t} | {fmt(before, key)} | {fmt(after, key)} | {verdict(before, after, key)} |")


if __name__ == "__main__":
    main()
