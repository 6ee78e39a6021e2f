"""Does the simulator's prediction depend on the action? Action-conditioned fidelity within a group.

GRPO in imagination learns from how the G rows of one start differ. Rows of one group start from the same state, so
what tells them apart in imagination is only what the simulator makes of their different action chunks. A simulator
that predicts a good average outcome but ignores the action (it reads the state, and the policy's intent from its
meta-queries) scores well on open-loop error and still ranks a group at chance.

This module compares, for B branch points × G sampled chunk sequences, the simulator's predicted full states with
the real simulator's outcome of the same executed actions (`rollout.ranking.replay_group`), after every chunk and for
the quantities a reward reads (hand and object position in Meta-World's full state):

- ``within_r2``: 1 − Σ‖(p − p̄) − (r − r̄)‖² / Σ‖r − r̄‖², bars the group means: the share of the real within-group
  variation the prediction explains. 0 = as good as predicting every row the same outcome; below 0 = worse.
- ``within_corr``: Pearson correlation of the centred predictions with the centred real outcomes (pooled over
  groups and coordinates): does the prediction move the way reality does when the action changes?
- ``spread_ratio``: √(Σ‖p − p̄‖² / Σ‖r − r̄‖²): how much the prediction varies within a group against reality
  (≈ 0: the action is ignored; > 1: it over-reacts).
- ``error`` / ``copy_error``: mean ‖p − r‖ against copying the start (metres); ``group_mean_error``: ‖p̄ − r̄‖, the
  error of the group's average outcome; ``real_spread``: the real within-group RMS spread (metres), the scale the
  ranking must resolve.

`open_loop_full_states` rolls a `rewards.dynamics_ensemble.DynamicsEnsemble` (or any one-chunk full-state model)
over the same actions, so that the policy's World Expert can be compared with a state-only model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

# Meta-World v3 full state (39-d): hand xyz, gripper, first object xyz + quaternion, second object, previous frame,
# goal. The quantities the state rewards read.
QUANTITIES: dict[str, tuple[int, ...]] = {"hand": (0, 1, 2), "object": (4, 5, 6)}

METRICS = ("within_r2", "within_corr", "spread_ratio", "error", "copy_error", "group_mean_error", "real_spread")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    saa, sbb = float((a * a).sum()), float((b * b).sum())
    if saa <= 1e-18 or sbb <= 1e-18:  # a constant (to rounding) has no correlation
        return float("nan")
    return float((a * b).sum() / np.sqrt(saa * sbb))


def within_group_fidelity(predicted: Any, real: Any, start: Any, dims: Sequence[int]) -> dict[str, float]:
    """Action-conditioned fidelity of one quantity at one chunk (see the module docstring for the metrics).

    Args:
        predicted: float [B, G, D] the simulator's prediction of every row (D = full-state dims or any features).
        real: float [B, G, D] the real outcome of the same actions.
        start: float [B, D] the state every group started from (for ``copy_error``).
        dims: the coordinates of D to compare (e.g. ``QUANTITIES["hand"]``).

    Returns:
        the metrics of `METRICS`; ``within_r2``, ``within_corr`` and ``spread_ratio`` are NaN when no group varies
        in reality.
    """
    p = np.asarray(predicted, np.float64)
    r = np.asarray(real, np.float64)
    s = np.asarray(start, np.float64)
    if p.shape != r.shape or p.ndim != 3:
        raise ValueError(f"within_group_fidelity: predicted {p.shape} and real {r.shape} must both be [B, G, D]")
    if s.shape != (p.shape[0], p.shape[2]):
        raise ValueError(f"within_group_fidelity: start must be [B={p.shape[0]}, D={p.shape[2]}], got {s.shape}")
    if p.shape[1] < 2:
        raise ValueError(f"within_group_fidelity: a group needs G ≥ 2 rows, got {p.shape[1]}")
    dims = list(dims)
    p, r, s = p[..., dims], r[..., dims], s[:, None, dims]
    pc, rc = p - p.mean(axis=1, keepdims=True), r - r.mean(axis=1, keepdims=True)
    ss_real, ss_pred = float((rc * rc).sum()), float((pc * pc).sum())
    varies = ss_real > 1e-12
    return {
        "within_r2": 1.0 - float(((pc - rc) ** 2).sum()) / ss_real if varies else float("nan"),
        "within_corr": _pearson(pc.ravel(), rc.ravel()) if varies else float("nan"),
        "spread_ratio": float(np.sqrt(ss_pred / ss_real)) if varies else float("nan"),
        "error": float(np.linalg.norm(p - r, axis=-1).mean()),
        "copy_error": float(np.linalg.norm(s - r, axis=-1).mean()),
        "group_mean_error": float(np.linalg.norm(p.mean(axis=1) - r.mean(axis=1), axis=-1).mean()),
        "real_spread": float(np.sqrt(ss_real / (rc.shape[0] * rc.shape[1]))),
    }


def fidelity_table(
    predicted: Any,
    real: Any,
    start: Any,
    quantities: Mapping[str, Sequence[int]] = QUANTITIES,
) -> dict[str, dict[str, float]]:
    """`within_group_fidelity` of every quantity after every chunk.

    Args:
        predicted, real: float [B, G, h, F] full states after each of h chunks.
        start: float [B, F] the branch points' full states.

    Returns:
        ``{"<quantity>/chunk<k>": metrics}`` for k = 1 … h.
    """
    p, r = np.asarray(predicted), np.asarray(real)
    if p.shape != r.shape or p.ndim != 4:
        raise ValueError(f"fidelity_table: predicted {p.shape} and real {r.shape} must both be [B, G, h, F]")
    out: dict[str, dict[str, float]] = {}
    for name, dims in quantities.items():
        for k in range(p.shape[2]):
            out[f"{name}/chunk{k + 1}"] = within_group_fidelity(p[:, :, k], r[:, :, k], start, dims)
    return out


def open_loop_full_states(
    step_fn: Callable[[torch.Tensor, torch.Tensor, list[str]], torch.Tensor],
    start: Any,
    actions: Any,
    task_names: Sequence[str],
) -> np.ndarray:
    """Roll a one-chunk full-state model over action chunks, feeding its own predictions back.

    Args:
        step_fn: ``(full_states float [N, F], actions float [N, H, A], task_names) -> next full states [N, F]``, e.g.
            `DynamicsEnsemble.predict_next`.
        start: float [N, F] the full states the rows start from.
        actions: float [N, h, H, A] the executed chunks.
        task_names: N task names.

    Returns:
        float32 [N, h, F] the predicted full state after each chunk.
    """
    x = torch.as_tensor(np.asarray(start), dtype=torch.float32)
    a = torch.as_tensor(np.asarray(actions), dtype=torch.float32)
    if a.ndim != 4 or a.shape[0] != x.shape[0]:
        raise ValueError(f"open_loop_full_states: actions must be [N={x.shape[0]}, h, H, A], got {tuple(a.shape)}")
    if len(task_names) != x.shape[0]:
        raise ValueError(f"open_loop_full_states: {x.shape[0]} rows but {len(task_names)} task names")
    out = []
    for k in range(a.shape[1]):
        x = torch.as_tensor(step_fn(x, a[:, k], list(task_names))).float()
        out.append(x)
    return torch.stack(out, dim=1).numpy()
