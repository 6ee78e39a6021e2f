"""Reading finished GRPO runs: the `metrics.jsonl` a `grpo_world` output_dir holds, and Wilson-interval verdicts.

Used by `benchmarks/grpo_runs_table.py` (tables of several runs) and `recipes/headline.py` (the headline report).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """Every row of ``<run>/metrics.jsonl`` (one JSON object per line)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl (is it a grpo_world output_dir?)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object ({e})") from e
    return rows


def eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real evaluations of a run, in order (rows carrying ``eval/real_success``)."""
    return [r for r in rows if r.get("eval/real_success") is not None]


def last_value(rows: list[dict[str, Any]], key: str) -> float | None:
    """The last logged value of `key`, None when it was never logged."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return vals[-1] if vals else None


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every row that logged `key` (NaN values left out)."""
    steps, vals = [], []
    for r in rows:
        v = r.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        steps.append(int(r.get("step", 0)))
        vals.append(float(v))
    return steps, vals


def budget_at(rows: list[dict[str, Any]], step: int, key: str = "budget/real_train_episodes") -> float:
    """The real training budget spent by the end of optimizer step `step` (the last value logged at or before it)."""
    best = 0.0
    for r in rows:
        if r.get(key) is not None and int(r.get("step", 0)) <= step:
            best = float(r[key])
    return best


def fmt_ci(row: dict[str, Any], key: str) -> str:
    """``0.575 [0.53, 0.62]`` from `key` and its ``_ci_low`` / ``_ci_high``; ``–`` when missing."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else f"{v:.3f}"


def intervals_apart(before: dict[str, Any], after: dict[str, Any], key: str) -> bool | None:
    """Whether the 95 % intervals of `key` in two evaluations do not overlap (None when either lacks them)."""
    try:
        b_lo, b_hi = before[f"{key}_ci_low"], before[f"{key}_ci_high"]
        a_lo, a_hi = after[f"{key}_ci_low"], after[f"{key}_ci_high"]
    except KeyError:
        return None
    return a_lo > b_hi or a_hi < b_lo


def verdict(before: dict[str, Any], after: dict[str, Any], key: str) -> str:
    """``+0.103 (intervals apart)`` or ``+0.035 (no measurable difference)``; ``–`` when either value is missing."""
    b, a = before.get(key), after.get(key)
    if b is None or a is None:
        return "–"
    apart = intervals_apart(before, after, key)
    if apart is None:
        return f"{a - b:+.3f}"
    return f"{a - b:+.3f}" + (" (intervals apart)" if apart else " (no measurable difference)")


def eval_tasks(row: dict[str, Any]) -> list[str]:
    """The tasks of an evaluation row (its ``eval/<task>/success`` keys), sorted."""
    return sorted(
        k.split("/")[1] for k in row if k.startswith("eval/") and k.endswith("/success") and k.count("/") == 2
    )
