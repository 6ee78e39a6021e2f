"""Metrics and calibration of a binary classifier: AUROC, reliability, ECE, Platt scaling, threshold choice."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wlarl.utils.stats import auroc  # noqa: F401  (this module's metrics include it)


def reliability_table(probs: Any, labels: Any, bins: int = 10) -> list[dict[str, float]]:
    """Per probability bin: count, mean predicted probability, observed success frequency.

    Returns:
        `bins` dicts with keys lo, hi, count, mean_prob, frac_positive (NaN for empty bins).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    table = []
    for b in range(bins):
        m = idx == b
        table.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": int(m.sum()),
                "mean_prob": float(p[m].mean()) if m.any() else float("nan"),
                "frac_positive": float(y[m].mean()) if m.any() else float("nan"),
            }
        )
    return table


def expected_calibration_error(probs: Any, labels: Any, bins: int = 10) -> float:
    """Σ_b (n_b / n) · |mean prob_b − frequency_b|."""
    table = reliability_table(probs, labels, bins)
    n = sum(r["count"] for r in table)
    if n == 0:
        return float("nan")
    return float(sum(r["count"] / n * abs(r["mean_prob"] - r["frac_positive"]) for r in table if r["count"]))


def fit_platt(logits: Any, labels: Any, max_iter: int = 200) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log-loss of sigmoid(a · logit + b) (Platt, 1999).

    Returns (1, 0) when one class is absent.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * z + params[1], y) + 1e-4 * params[0] ** 2
        loss.backward()
        return loss

    opt.step(closure)
    a, b = params.detach().tolist()
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        return 1.0, 0.0
    return float(a), float(b)


def choose_threshold(probs: Any, labels: Any, rule: str = "f1") -> float:
    """Decision threshold on probabilities maximising F1 (rule "f1") or Youden's J = TPR − FPR (rule "youden")."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if rule not in ("f1", "youden"):
        raise ValueError(f"threshold rule: expected 'f1' or 'youden', got {rule!r}")
    if y.all() or (~y).all():
        return 0.5
    best, best_t = -1.0, 0.5
    for t in np.unique(p):
        pred = p >= t
        tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
        fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
        if rule == "f1":
            score = 2 * tp / max(2 * tp + fp + fn, 1)
        else:
            score = tp / max(tp + fn, 1) - fp / max(fp + tn, 1)
        if score > best:
            best, best_t = score, float(t)
    return best_t


def classification_metrics(probs: Any, labels: Any, threshold: float, prefix: str = "") -> dict[str, Any]:
    """AUROC, ECE, Brier, accuracy, precision, recall at `threshold`, plus counts; keys prefixed by `prefix`."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pred = p >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    out = {
        "auroc": auroc(p, y),
        "ece": expected_calibration_error(p, y),
        "brier": float(np.mean((p - y) ** 2)) if len(p) else float("nan"),
        "accuracy": float((pred == y).mean()) if len(p) else float("nan"),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "positives": int(y.sum()),
        "count": len(p),
    }
    return {f"{prefix}{k}": v for k, v in out.items()}


def format_reliability(table: list[dict[str, float]]) -> str:
    """A markdown reliability table."""
    lines = ["| bin | count | mean predicted | observed frequency |", "|---|---|---|---|"]
    for r in table:
        if r["count"]:
            lines.append(
                f"| {r['lo']:.1f}–{r['hi']:.1f} | {r['count']} | {r['mean_prob']:.3f} | {r['frac_positive']:.3f} |"
            )
        else:
            lines.append(f"| {r['lo']:.1f}–{r['hi']:.1f} | 0 | – | – |")
    return "\n".join(lines)
