"""Statistics used by evaluation, verification and reward ranking: Wilson intervals, confusion matrices, AUROC, PSNR.

Pure functions of numbers/arrays, no I/O. Arrays may be numpy arrays or torch tensors (converted with
`np.asarray`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (E. B. Wilson, 1927).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at 0 or n successes,
    which matters for the small episode counts of robot evaluation.

        centre = (p̂ + z²/2n) / (1 + z²/n),  half = z·sqrt(p̂(1-p̂)/n + z²/4n²) / (1 + z²/n)

    Args:
        successes: number of successes k, 0 <= k <= n.
        n: number of trials.
        z: normal quantile; the default gives a two-sided 95 % interval.

    Returns:
        (low, high). For n == 0 the uninformative interval (0.0, 1.0).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    # At 0 (n) successes the low (high) bound is exactly 0 (1); rounding would leave it a hair inside, above the
    # point estimate, and clamp other tiny float excursions so callers can rely on low <= p̂ <= high within [0, 1].
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def success_summary(outcomes: Sequence[bool] | np.ndarray | Any, z: float = 1.959963984540054) -> dict[str, float]:
    """Success rate of binary outcomes with its Wilson interval.

    Args:
        outcomes: [E] booleans (one per episode).
        z: normal quantile of the interval (95 % by default).

    Returns:
        {"success": k/n (NaN when n == 0), "ci_low", "ci_high", "n": n, "successes": k}.
    """
    arr = np.asarray(outcomes, dtype=bool).reshape(-1)
    n, k = int(arr.size), int(arr.sum())
    low, high = wilson_interval(k, n, z)
    return {"success": k / n if n else float("nan"), "ci_low": low, "ci_high": high, "n": n, "successes": k}


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half); NaN when one class is absent."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: Any, b: Any, constant: float = 0.0) -> float:
    """Spearman rank correlation (average ranks for ties); `constant` when either side is constant or has fewer than
    two values (it orders nothing: 0 for a reward's within-group order, NaN for a metric)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, np.float64)), rankdata(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float(constant)


def binary_confusion(predicted: Any, actual: Any) -> dict[str, int]:
    """Confusion matrix of predicted vs actual binary outcomes.

    Args:
        predicted: [N] booleans (e.g. imagined success).
        actual: [N] booleans (e.g. real success), paired row by row with `predicted`.

    Returns:
        {"tp", "fp", "fn", "tn"} counts.
    """
    p = np.asarray(predicted, dtype=bool).reshape(-1)
    a = np.asarray(actual, dtype=bool).reshape(-1)
    if p.shape != a.shape:
        raise ValueError(f"binary_confusion: expected predicted and actual of equal length, got {p.size} and {a.size}")
    return {
        "tp": int((p & a).sum()),
        "fp": int((p & ~a).sum()),
        "fn": int((~p & a).sum()),
        "tn": int((~p & ~a).sum()),
    }


def precision_recall(confusion: dict[str, int]) -> dict[str, float]:
    """Precision tp/(tp+fp), recall tp/(tp+fn) and agreement (tp+tn)/n of a confusion matrix; NaN when undefined."""
    tp, fp, fn, tn = (confusion[k] for k in ("tp", "fp", "fn", "tn"))
    n = tp + fp + fn + tn
    return {
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "agreement": (tp + tn) / n if n else float("nan"),
    }


def psnr(
    predicted: Any, target: Any, mask: Any | None = None, max_value: float = 255.0, max_db: float = 100.0
) -> np.ndarray:
    """Peak signal-to-noise ratio per image, optionally on a pixel mask only.

    Args:
        predicted: [N, H, W, C] (or [H, W, C]) images, uint8 or float on the same scale as `max_value`.
        target: same shape as `predicted`.
        mask: optional bool [N, H, W] (or [H, W]); only True pixels count. Images with an empty mask get NaN.
        max_value: peak value (255 for uint8, 1.0 for [0, 1] floats).
        max_db: cap for identical images (whose PSNR is infinite), so that means stay finite.

    Returns:
        float64 [N] PSNR in dB (a scalar array for a single image).
    """
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"psnr: expected predicted and target of equal shape, got {x.shape} and {y.shape}")
    single = x.ndim == 3
    if single:
        x, y = x[None], y[None]
    if x.ndim != 4:
        raise ValueError(f"psnr: expected images [N, H, W, C] or [H, W, C], got shape {x.shape}")
    se = ((x - y) ** 2).mean(axis=-1)  # [N, H, W] per-pixel squared error averaged over channels
    if mask is None:
        mse = se.reshape(se.shape[0], -1).mean(axis=1)
        count = np.full(se.shape[0], se[0].size)
    else:
        m = np.asarray(mask, dtype=bool)
        if single:
            m = m[None]
        if m.shape != se.shape:
            raise ValueError(f"psnr: expected mask of shape {se.shape} ([N, H, W]), got {m.shape}")
        count = m.reshape(m.shape[0], -1).sum(axis=1)
        mse = np.where(count > 0, (se * m).reshape(se.shape[0], -1).sum(axis=1) / np.maximum(count, 1), np.nan)
    with np.errstate(divide="ignore"):
        out = np.minimum(10.0 * np.log10(max_value**2 / mse), max_db)
    out = np.where(count > 0, out, np.nan)
    return out[0] if single else out


def changed_pixel_mask(reference: Any, target: Any, threshold: float = 8.0) -> np.ndarray:
    """Pixels whose value changed between two frames by more than `threshold` in any channel.

    Args:
        reference: [N, H, W, C] frames (e.g. the last observed real frame).
        target: [N, H, W, C] frames (e.g. the real frame k chunks later).
        threshold: absolute change (uint8 scale) above which a pixel counts as changed.

    Returns:
        bool [N, H, W].
    """
    a = np.asarray(reference, dtype=np.float32)
    b = np.asarray(target, dtype=np.float32)
    return (np.abs(a - b) > threshold).any(axis=-1)


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean ignoring NaN (and infinities); NaN when nothing finite is left."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")
