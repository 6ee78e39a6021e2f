"""GRPO math for imagined robot rollouts: pure functions of tensors (no I/O, no module state).

Rows are grouped consecutively, B start states × G samples: ``row = b * G + g`` and ``N = B * G``. F is the number
of reward functions, T the number of chunks of an imagined episode and T' the number of loss "tokens" of a row:
one per chunk (the chunk's action log-prob), optionally followed by subtask-text tokens.

Names and meanings follow TRL's ``GRPOConfig`` (``loss_type``, ``scale_rewards``, ``multi_objective_aggregation``,
``epsilon``/``epsilon_high``, ``delta``, ``beta``, ``importance_sampling_level``, ``mask_truncated_completions``);
the reductions match ``trl.GRPOTrainer._compute_loss`` and the advantages ``_generate_and_score_completions``.

Typical use by a trainer::

    adv_N, stats = compute_advantages(rewards_NF, weights_F, G, cfg.multi_objective_aggregation, cfg.scale_rewards)
    adv_NT = broadcast_advantages(adv_N, alive_NT)
    loss, stats = policy_loss(logp_new_NT, logp_old_NT, adv_NT, alive_NT, cfg.loss_type, cfg.epsilon, eps_high)
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# Log importance ratios (and k3's ref − new) are clamped here before exp(): e^20 ≈ 5e8 is far outside any clip range,
# and it keeps losses and gradients finite when a chunk's summed log-prob moved a lot.
MAX_LOG_RATIO = 20.0

__all__ = [
    "AGGREGATIONS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "SCALE_REWARDS",
    "aggregate_rewards",
    "broadcast_advantages",
    "compute_advantages",
    "dynamic_sampling_mask",
    "group_advantages",
    "group_row_indices",
    "kl_k3",
    "mask_truncated",
    "nanstd",
    "nll_anchor_loss",
    "policy_loss",
    "reduce_token_loss",
    "refill_groups",
    "signal_groups_mask",
    "truncated_at_horizon",
]


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _check_groups(n: int, G: int, what: str) -> int:
    if G < 1:
        raise ValueError(f"{what}: group size G must be ≥ 1, got {G}")
    if n % G != 0:
        raise ValueError(f"{what}: {n} rows are not a whole number of groups of G={G} (rows are grouped b*G + g)")
    return n // G


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation ignoring NaN, with Bessel's correction (unbiased), as ``trl.trainer.utils.nanstd``.

    NaN where fewer than 2 values are finite (the std of one sample is undefined).
    """
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True).to(x.dtype)
    var = torch.where(count > 1, var * count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    std = var.sqrt()
    if dim is None:
        return std.reshape(()) if not keepdim else std
    return std if keepdim else std.squeeze(dim)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(torch.bool)
    return torch.where(m, x, torch.zeros_like(x)).sum() / m.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------------------
# rewards → advantages


def aggregate_rewards(
    rewards_NF: torch.Tensor,
    weights_F: torch.Tensor,
    aggregation: str = "sum_then_normalize",
    G: int | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Combine F reward functions into one reward per row.

    NaN in ``rewards_NF`` means "this function skipped this row" (it returned None).

    - ``sum_then_normalize`` (TRL default): ``r_n = Σ_f w_f r_nf`` with NaN counted as 0; group normalisation is
      applied afterwards by :func:`group_advantages`.
    - ``normalize_then_sum`` (LightningRL decoupled normalisation; GDPO, arXiv:2601.05242): each reward is z-scored
      within its group ignoring NaN rows, ``(r_nf − mean_g) / (std_g + eps)``, NaN → 0 after normalisation, then
      weighted sum. Needs ``G``.

    As in TRL, a row that every function skipped is unscorable: its aggregate is NaN, so that it stays out of the
    group baseline; :func:`group_advantages` gives it advantage 0.

    Args:
        rewards_NF: float [N, F], NaN where skipped.
        weights_F: float [F] reward weights (``reward_weights``).
        aggregation: ``"sum_then_normalize"`` or ``"normalize_then_sum"`` (``multi_objective_aggregation``).
        G: group size (``num_generations``); required for ``normalize_then_sum``.
        eps: added to the group std (TRL uses 1e-4).

    Returns:
        float [N] aggregated rewards (NaN only on unscorable rows).
    """
    if rewards_NF.ndim != 2:
        raise ValueError(f"rewards_NF: expected shape [N, F], got {tuple(rewards_NF.shape)}")
    weights_F = torch.as_tensor(weights_F, dtype=rewards_NF.dtype, device=rewards_NF.device)
    if weights_F.shape != (rewards_NF.shape[1],):
        raise ValueError(f"weights_F: expected shape [{rewards_NF.shape[1]}] (one weight per reward function)")
    unscorable_N = torch.isnan(rewards_NF).all(dim=1)
    if aggregation == "sum_then_normalize":
        per_func_NF = rewards_NF
    elif aggregation == "normalize_then_sum":
        if G is None:
            raise ValueError("aggregate_rewards: normalize_then_sum needs the group size G")
        B = _check_groups(rewards_NF.shape[0], G, "aggregate_rewards")
        grouped_BGF = rewards_NF.view(B, G, -1)
        mean_B1F = torch.nanmean(grouped_BGF, dim=1, keepdim=True)
        std_B1F = nanstd(grouped_BGF, dim=1, keepdim=True) if G > 1 else torch.zeros_like(mean_B1F)
        per_func_NF = ((grouped_BGF - mean_B1F) / (std_B1F + eps)).view(-1, rewards_NF.shape[1])
    else:
        raise ValueError(f"multi_objective_aggregation: unknown value {aggregation!r}; expected one of {AGGREGATIONS}")
    # NaN (skipped, or a group whose std is undefined) contributes 0 to the weighted sum.
    rewards_N = (torch.nan_to_num(per_func_NF, nan=0.0) * weights_F[None, :]).sum(dim=1)
    return torch.where(unscorable_N, torch.full_like(rewards_N, float("nan")), rewards_N)


def group_advantages(rewards_N: torch.Tensor, G: int, scale_rewards: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: reward minus its group mean, divided by a std (DeepSeekMath eq. 3; Dr. GRPO for ``none``).

    ``A_n = (r_n − mean_{g}(r)) / (std + eps)`` where std is the group std (``group``), the std over the whole batch
    (``batch``, PPO-Lite) or no scaling at all (``none``, Dr. GRPO). Stds are unbiased (Bessel-corrected) and
    NaN-aware, exactly as TRL. Groups with zero std get advantage 0; NaN rewards (unscorable rows) are left out of
    means and stds and get advantage 0, so the result never contains NaN.

    Args:
        rewards_N: float [N], rows grouped as b*G + g; NaN = unscorable.
        G: group size.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``.
        eps: added to the std.

    Returns:
        float [N] advantages.
    """
    if rewards_N.ndim != 1:
        raise ValueError(f"rewards_N: expected shape [N], got {tuple(rewards_N.shape)}")
    B = _check_groups(rewards_N.shape[0], G, "group_advantages")
    grouped_BG = rewards_N.view(B, G)
    mean_N = torch.nanmean(grouped_BG, dim=1).repeat_interleave(G)
    adv_N = rewards_N - mean_N
    if scale_rewards == "group":
        std_N = nanstd(grouped_BG, dim=1).repeat_interleave(G) if G > 1 else torch.zeros_like(rewards_N)
        adv_N = adv_N / (std_N + eps)
    elif scale_rewards == "batch":
        std = nanstd(rewards_N) if rewards_N.numel() > 1 else torch.zeros((), dtype=rewards_N.dtype)
        adv_N = adv_N / (std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards: unknown value {scale_rewards!r}; expected one of {SCALE_REWARDS}")
    # NaN comes from unscorable rows or groups with < 2 scored rows: no learning signal there.
    return torch.nan_to_num(adv_N, nan=0.0)


def compute_advantages(
    rewards_NF: torch.Tensor,
    weights_F: torch.Tensor,
    G: int,
    aggregation: str = "sum_then_normalize",
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rewards of F functions → advantages, exactly as TRL's GRPOTrainer does it.

    ``sum_then_normalize``: :func:`aggregate_rewards` then :func:`group_advantages` with ``scale_rewards``.
    ``normalize_then_sum``: per-function group z-scores summed with weights, then normalised over the whole batch
    (``(r − mean_batch) / (std_batch + eps)``, GDPO/TRL); ``scale_rewards`` is not used in that mode.

    Args:
        rewards_NF: float [N, F], NaN where a function skipped a row.
        weights_F: float [F].
        G: group size.
        aggregation: ``multi_objective_aggregation``.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``.
        eps: added to stds.

    Returns:
        (advantages float [N], stats) where stats holds 0-d tensors ``reward_mean``, ``reward_std`` (over the
        aggregated rewards) and ``frac_reward_zero_std`` (fraction of groups whose aggregated reward has std 0).
    """
    rewards_N = aggregate_rewards(rewards_NF, weights_F, aggregation, G, eps)
    B = _check_groups(rewards_N.shape[0], G, "compute_advantages")
    if aggregation == "sum_then_normalize":
        adv_N = group_advantages(rewards_N, G, scale_rewards, eps)
    else:
        std = nanstd(rewards_N) if rewards_N.numel() > 1 else torch.zeros((), dtype=rewards_N.dtype)
        adv_N = torch.nan_to_num((rewards_N - torch.nanmean(rewards_N)) / (std + eps), nan=0.0)
    group_std_B = torch.nan_to_num(nanstd(rewards_N.view(B, G), dim=1), nan=0.0)
    stats = {
        "reward_mean": torch.nanmean(rewards_N).detach(),
        "reward_std": nanstd(rewards_N).detach(),
        "frac_reward_zero_std": torch.isclose(group_std_B, torch.zeros_like(group_std_B)).float().mean(),
    }
    return adv_N, stats


def broadcast_advantages(adv_N: torch.Tensor, alive_NT: torch.Tensor) -> torch.Tensor:
    """Give every chunk of a trajectory its trajectory's advantage (rewards are per trajectory, no discounting).

    Args:
        adv_N: float [N].
        alive_NT: bool [N, T], True on chunks that ran.

    Returns:
        float [N, T]: ``adv_N[n]`` where alive, 0 elsewhere.
    """
    if alive_NT.ndim != 2 or alive_NT.shape[0] != adv_N.shape[0]:
        raise ValueError(f"alive_NT: expected shape [{adv_N.shape[0]}, T], got {tuple(alive_NT.shape)}")
    return torch.where(alive_NT.to(torch.bool), adv_N[:, None], torch.zeros((), dtype=adv_N.dtype))


# ----------------------------------------------------------------------------------------------------------------------
# filters


def dynamic_sampling_mask(success_N: torch.Tensor, G: int, lo: float = 0.1, hi: float = 0.9) -> torch.Tensor:
    """Groups worth training on: success rate within ``[lo, hi]`` (DAPO dynamic sampling; LightningRL; πRL/WMPO).

    A group where every sample succeeds (or every one fails) has zero advantage everywhere and only dilutes the
    batch. Rates are computed in float64 so that e.g. 7/10 compares equal to 0.7.

    Args:
        success_N: bool or float [N] per-row success (1 = success).
        G: group size.
        lo, hi: inclusive bounds on the per-group success rate, 0 ≤ lo ≤ hi ≤ 1.

    Returns:
        bool [B]: True for groups to keep.
    """
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"dynamic_sampling_mask: need 0 ≤ lo ≤ hi ≤ 1, got lo={lo}, hi={hi}")
    B = _check_groups(success_N.shape[0], G, "dynamic_sampling_mask")
    rate_B = success_N.to(torch.float64).view(B, G).mean(dim=1)
    tol = 1e-9
    return (rate_B >= lo - tol) & (rate_B <= hi + tol)


def signal_groups_mask(rewards_N: torch.Tensor, G: int, lo: float = 0.1, hi: float = 0.9) -> torch.Tensor:
    """Groups whose reward carries a learning signal: the filter of dynamic sampling on what the advantages use.

    A group is kept when at least two of its rows are scored and its reward is not constant (std > 0: otherwise
    every advantage of the group is 0). When every scored reward of the batch is 0 or 1 (a binary success reward),
    the group's mean reward — its success rate — must also lie in ``[lo, hi]`` (DAPO; the VLA-GRPO recipes keep
    [0.1, 0.9]). NaN marks unscored rows (:func:`aggregate_rewards`).

    Args:
        rewards_N: float [N] aggregated reward per row, NaN where unscored.
        G: group size.
        lo, hi: inclusive bounds on the success rate of a binary reward.

    Returns:
        bool [B]: True for groups to keep.
    """
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"signal_groups_mask: need 0 ≤ lo ≤ hi ≤ 1, got lo={lo}, hi={hi}")
    B = _check_groups(rewards_N.shape[0], G, "signal_groups_mask")
    r_BG = rewards_N.to(torch.float64).view(B, G)
    scored_BG = ~torch.isnan(r_BG)
    std_B = torch.nan_to_num(nanstd(r_BG, dim=1), nan=0.0)
    keep_B = (scored_BG.sum(1) >= 2) & (std_B > 1e-9)
    finite = r_BG[scored_BG]
    if finite.numel() and bool(((finite == 0) | (finite == 1)).all()):
        rate_B = torch.nanmean(r_BG, dim=1)
        tol = 1e-9
        keep_B &= (rate_B >= lo - tol) & (rate_B <= hi + tol)
    return keep_B


def refill_groups(
    keep_masks: list[torch.Tensor], num_groups: int, fill_with_dropped: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Pick the first ``num_groups`` kept groups over several oversampling rounds (DAPO-style batch refill).

    The trainer samples a round of B groups, computes :func:`dynamic_sampling_mask`, and resamples until enough
    groups are kept (or ``max_resample_rounds`` is reached). Kept groups are taken in order: round 0 first, then
    group index. When too few were kept and ``fill_with_dropped`` is True, the batch is topped up with the first
    dropped groups (in the same order) so its size stays B; otherwise fewer than ``num_groups`` are returned.

    Args:
        keep_masks: per round r, bool [B_r] keep mask.
        num_groups: groups wanted (B).
        fill_with_dropped: top up with dropped groups when short.

    Returns:
        (round_K, group_K, report): long [K] round index and long [K] group index within that round of each selected
        group, K ≤ num_groups (K == num_groups when enough groups were kept or ``fill_with_dropped``); report holds
        ints ``kept`` (kept groups over all rounds), ``dropped``, ``selected`` (K), ``filled_with_dropped`` (how many
        dropped groups were used to top up), ``short`` (num_groups − K) and ``rounds``.
        Use :func:`group_row_indices` to turn group indices into row indices.
    """
    if num_groups < 0:
        raise ValueError(f"refill_groups: num_groups must be ≥ 0, got {num_groups}")
    kept: list[tuple[int, int]] = []
    dropped: list[tuple[int, int]] = []
    for r, keep_B in enumerate(keep_masks):
        if keep_B.ndim != 1:
            raise ValueError(f"refill_groups: keep_masks[{r}] must have shape [B], got {tuple(keep_B.shape)}")
        for b, k in enumerate(keep_B.to(torch.bool).tolist()):
            (kept if k else dropped).append((r, b))
    chosen = kept[:num_groups]
    n_fill = 0
    if fill_with_dropped and len(chosen) < num_groups:
        n_fill = min(num_groups - len(chosen), len(dropped))
        chosen = chosen + dropped[:n_fill]
    round_K = torch.tensor([r for r, _ in chosen], dtype=torch.long)
    group_K = torch.tensor([b for _, b in chosen], dtype=torch.long)
    report = {
        "kept": len(kept),
        "dropped": len(dropped),
        "selected": len(chosen),
        "filled_with_dropped": n_fill,
        "short": num_groups - len(chosen),
        "rounds": len(keep_masks),
    }
    return round_K, group_K, report


def group_row_indices(group_K: torch.Tensor, G: int) -> torch.Tensor:
    """Row indices of groups: long [K] group ids → long [K*G] rows ``b*G + g`` (groups stay consecutive)."""
    group_K = torch.as_tensor(group_K, dtype=torch.long)
    return (group_K[:, None] * G + torch.arange(G, dtype=torch.long)[None, :]).reshape(-1)


def truncated_at_horizon(alive_NT: torch.Tensor, success_N: torch.Tensor) -> torch.Tensor:
    """bool [N]: episodes that were still running at the last chunk T−1 and did not succeed (cut by the horizon)."""
    return alive_NT[:, -1].to(torch.bool) & ~success_N.to(torch.bool)


def mask_truncated(
    mask_NT: torch.Tensor, success_N: torch.Tensor, alive_NT: torch.Tensor | None = None
) -> torch.Tensor:
    """Zero the loss mask of episodes cut by the horizon (TRL ``mask_truncated_completions``; DAPO overlong filter).

    An episode is truncated when it was still running at the last chunk and did not succeed
    (:func:`truncated_at_horizon`). Caution for robot rollouts: when failures only end at the horizon, this removes
    every failure from the loss.

    Args:
        mask_NT: bool/float [N, T'] loss mask; when ``alive_NT`` is None it must be the alive mask [N, T] itself.
        success_N: bool [N] episode success.
        alive_NT: optional bool [N, T] alive mask, when ``mask_NT`` is some other token mask (e.g. [N, 2T]).

    Returns:
        mask of the same dtype and shape, all-zero on truncated rows.
    """
    truncated_N = truncated_at_horizon(mask_NT if alive_NT is None else alive_NT, success_N)
    keep_N1 = ~truncated_N[:, None]
    if mask_NT.dtype == torch.bool:
        return mask_NT & keep_N1
    return mask_NT * keep_N1.to(mask_NT.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# losses


def kl_k3(logp_new: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_new ‖ π_ref): ``exp(ref − new) − (ref − new) − 1`` ≥ 0 (Schulman 2020).

    Args:
        logp_new, logp_ref: float [N, T'] log-probs of the sampled tokens under the policy and the reference.

    Returns:
        float [N, T'].
    """
    # A chunk's log-prob sums many action elements, so ref − new can pass 88 (exp overflows, inf · 0 = NaN in the
    # backward pass) after one large step; beyond MAX_LOG_RATIO the term is held flat (finite, no gradient).
    d = (logp_ref - logp_new).clamp(max=MAX_LOG_RATIO)
    return torch.exp(d) - d - 1.0


def reduce_token_loss(
    per_token_NT: torch.Tensor,
    mask_NT: torch.Tensor,
    loss_type: str,
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar the way TRL's ``loss_type`` does.

    - ``grpo``: mean over each row's valid tokens, then mean over rows (DeepSeekMath; length-biased).
    - ``bnpo``: sum over all valid tokens / number of valid tokens in this (local) batch.
    - ``dr_grpo``: sum / (N · max_completion_length) (Dr. GRPO, arXiv:2503.20783); the constant defaults to T'.
    - ``dapo``: sum / number of valid tokens in the *global* batch (DAPO token-level loss, arXiv:2503.14476). Pass
      ``num_items`` = global valid-token count / world size (DDP averages gradients over processes); without it
      the local count is used, which makes ``dapo`` identical to ``bnpo`` on one process.

    Masked-out positions never contribute, even when they hold NaN or inf.

    Args:
        per_token_NT: float [N, T'].
        mask_NT: bool/float [N, T'].
        loss_type: one of ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``.
        max_completion_length: ``dr_grpo`` constant (tokens per row).
        num_items: ``dapo`` normaliser.

    Returns:
        0-d tensor.
    """
    m = mask_NT.to(torch.bool)
    x = torch.where(m, per_token_NT, torch.zeros_like(per_token_NT))
    if loss_type == "grpo":
        return (x.sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if loss_type == "bnpo":
        return x.sum() / m.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        length = per_token_NT.shape[1] if max_completion_length is None else max_completion_length
        return x.sum() / (per_token_NT.shape[0] * length)
    if loss_type == "dapo":
        denom = m.sum() if num_items is None else torch.as_tensor(num_items, dtype=x.dtype)
        return x.sum() / denom.clamp(min=1)
    raise ValueError(f"loss_type: unknown value {loss_type!r}; expected one of {LOSS_TYPES}")


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    max_completion_length: int | None = None,
    *,
    importance_sampling_level: str = "token",
    logp_ref: torch.Tensor | None = None,
    beta: float = 0.0,
    token_weights: torch.Tensor | None = None,
    num_items: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate over per-chunk (and subtask) tokens, reduced as TRL's ``loss_type``.

    Per token, with ratio ``ρ = exp(logp_new − logp_old)``:
    ``ℓ = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)`` (PPO eq. 7; DAPO clip-higher when ε_high > ε_low).
    With ``delta`` (INTELLECT-2 two-sided clipping) the unclipped ratio is also capped: ``ρ ← min(ρ, δ)``.
    ``importance_sampling_level="sequence"`` (GSPO) uses one ratio per row, ``exp(mean_valid(logp_new − logp_old))``.
    With ``beta > 0`` and ``logp_ref``, ``β · k3`` (:func:`kl_k3`) is added to each token before the reduction, as TRL.
    ``token_weights`` multiply the per-token loss (e.g. ``subtask_coef`` on subtask tokens, 1 on action tokens); the
    token counts of the reductions still come from ``mask``.

    Args:
        logp_new: float [N, T'] log-probs under the current policy (with grad).
        logp_old: float [N, T'] log-probs under the sampling policy (no grad).
        advantages: float [N] or [N, T'] (see :func:`broadcast_advantages`).
        mask: bool/float [N, T'] valid tokens.
        loss_type: ``grpo``, ``bnpo``, ``dr_grpo`` or ``dapo`` (see :func:`reduce_token_loss`).
        epsilon_low: ``epsilon``, lower clip.
        epsilon_high: upper clip (``epsilon_high``; DAPO uses 0.28); None → ``epsilon_low`` (as TRL).
        delta: optional cap on the unclipped ratio.
        max_completion_length: ``dr_grpo`` constant; defaults to T'.
        importance_sampling_level: ``token`` or ``sequence``.
        logp_ref: float [N, T'] reference log-probs, required when ``beta > 0``.
        beta: KL coefficient.
        token_weights: optional float [N, T'].
        num_items: ``dapo`` global normaliser (see :func:`reduce_token_loss`).

    Returns:
        (loss 0-d tensor with grad, stats of detached 0-d tensors): ``policy_loss`` (the clipped term alone),
        ``kl`` (masked mean k3, when beta > 0), ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``approx_kl``
        (masked mean k3 of old vs new), ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
        ``clip_ratio/region_mean`` (fractions of valid tokens clipped below with A < 0, above with A > 0, either).
    """
    if logp_new.ndim != 2 or logp_old.shape != logp_new.shape or mask.shape != logp_new.shape:
        raise ValueError(
            f"policy_loss: logp_new, logp_old and mask must share shape [N, T'], got {tuple(logp_new.shape)}, "
            f"{tuple(logp_old.shape)}, {tuple(mask.shape)}"
        )
    if epsilon_high is None:
        epsilon_high = epsilon_low
    if epsilon_high < 0 or epsilon_low < 0:
        raise ValueError(f"policy_loss: clip ranges must be ≥ 0, got epsilon_low={epsilon_low}, high={epsilon_high}")
    m = mask.to(torch.bool)
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    # Masked positions may hold padding garbage: zero their log-ratio so exp() stays finite.
    log_ratio = torch.where(m, logp_new - logp_old, torch.zeros_like(logp_new))
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":
        log_w = (log_ratio.sum(-1) / m.sum(-1).clamp(min=1))[:, None]  # [N, 1]
    else:
        raise ValueError(
            f"importance_sampling_level: unknown value {importance_sampling_level!r}; "
            f"expected one of {IMPORTANCE_SAMPLING_LEVELS}"
        )
    ratio = torch.exp(log_w.clamp(max=MAX_LOG_RATIO))  # [N, T'] or [N, 1]; finite however far the policy moved
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_token = -torch.min(unclipped * adv, clipped * adv)  # [N, T']
    per_token = per_token.expand_as(logp_new)
    if token_weights is not None:
        per_token = per_token * token_weights
    clip_loss = reduce_token_loss(per_token, m, loss_type, max_completion_length, num_items)
    loss = clip_loss
    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        if logp_ref is None:
            raise ValueError("policy_loss: beta > 0 needs logp_ref (reference log-probs)")
        kl_NT = kl_k3(logp_new, logp_ref)
        loss = reduce_token_loss(per_token + beta * kl_NT, m, loss_type, max_completion_length, num_items)
        stats["kl"] = _masked_mean(kl_NT, m).detach()
    with torch.no_grad():
        ratio_NT = ratio.expand_as(logp_new)
        adv_NT = adv.expand_as(logp_new)
        low = (ratio_NT < 1 - epsilon_low) & (adv_NT < 0)
        high = (ratio_NT > 1 + epsilon_high) & (adv_NT > 0)
        valid_ratio = ratio_NT[m] if m.any() else torch.ones(1, dtype=ratio.dtype)
        stats.update(
            {
                "policy_loss": clip_loss.detach(),
                "ratio_mean": _masked_mean(ratio_NT, m),
                "ratio_min": valid_ratio.min(),
                "ratio_max": valid_ratio.max(),
                "approx_kl": _masked_mean(kl_k3(logp_old, logp_new.detach()), m),
                "clip_ratio/low_mean": _masked_mean(low.float(), m),
                "clip_ratio/high_mean": _masked_mean(high.float(), m),
                "clip_ratio/region_mean": _masked_mean((low | high).float(), m),
            }
        )
    return loss, stats


def nll_anchor_loss(logp_new: torch.Tensor, mask: torch.Tensor, success_N: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the valid tokens of successful rows (LightningRL's NLL on correct samples).

    The weight (``nll_coef``, ~0.1 in LightningRL) is applied by the caller. Returns 0 (still attached to the graph)
    when no row succeeded.

    Args:
        logp_new: float [N, T'] log-probs under the current policy.
        mask: bool/float [N, T'] valid tokens.
        success_N: bool [N].

    Returns:
        0-d tensor: ``−Σ_{n succ, t valid} logp / #(succ, valid tokens)``.
    """
    m = mask.to(torch.bool) & success_N.to(torch.bool)[:, None]
    return -torch.where(m, logp_new, torch.zeros_like(logp_new)).sum() / m.sum().clamp(min=1)
