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
from pathlib import Path

from wlarl.utils.runs import eval_rows, eval_tasks, fmt_ci, last_value, read_metrics, verdict


def read(run: Path) -> list[dict]:
    try:
        return read_metrics(run)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--names", nargs="*")
    ap.add_argument("--baseline", type=Path, help="run whose first evaluation is the 'before' of runs without one")
    args = ap.parse_args()
    names = args.names or [r.name for r in args.runs]
    base_eval = eval_rows(read(args.baseline))[0] if args.baseline else None
    print("| run | real train episodes (env steps) | greedy before | greedy after | Δ greedy | sampled before | "
          "sampled after | eval episodes | wall min | mean shift | action std |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    per_task = []
    for name, run in zip(names, args.runs):
        rows = read(run)
        ev = eval_rows(rows)
        if not ev:
            raise SystemExit(f"{run}: no evaluation rows")
        after = ev[-1]
        # "before" is the evaluation at step 0: the run's own, else the baseline run's (same policy and seeds)
        before = ev[0] if ev[0]["step"] == 0 and len(ev) > 1 else (base_eval or {})
        runtime = last_value(rows, "train_runtime")
        print(
            f"| {name} | {last_value(rows, 'budget/real_train_episodes') or 0:.0f} "
            f"({last_value(rows, 'budget/real_train_env_steps') or 0:.0f}) | {fmt_ci(before, 'eval/real_success')} | "
            f"{fmt_ci(after, 'eval/real_success')} | {verdict(before, after, 'eval/real_success')} | "
            f"{fmt_ci(before, 'eval/real_success_sampled')} | {fmt_ci(after, 'eval/real_success_sampled')} | "
            f"{last_value(rows, 'budget/real_eval_episodes') or 0:.0f} | "
            f"{(runtime or float('nan')) / 60:.1f} | {last_value(rows, 'policy/mean_shift') or float('nan'):.3f} | "
            f"{last_value(rows, 'policy/action_std') or float('nan'):.3f} |"
        )
        per_task.append((name, before, after))
    for name, before, after in per_task:
        tasks = eval_tasks(after)
        print(f"\n{name}, per task (greedy):\n")
        print("| task | before | after | Δ |")
        print("|---|---|---|---|")
        for t in tasks:
            key = f"eval/{t}/success"
            print(f"| {t} | {fmt_ci(before, key)} | {fmt_ci(after, key)} | {verdict(before, after, key)} |")


if __name__ == "__main__":
    main()
