"""Hand-computed checks of the GRPO math in wlarl.algorithms.grpo (numbers worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from wlarl.algorithms import grpo

NAN = float("nan")
Z = 1.0 / (math.sqrt(2.0) + 1e-4)  # z-score of a pair {x−1, x+1}: unbiased std √2, plus eps 1e-4 → 0.707057


def close(a: torch.Tensor, b: list[float] | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.double(), torch.as_tensor(b, dtype=torch.float64), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# nanstd (must match TRL)


def test_nanstd_matches_trl_and_ignores_nan():
    from trl.trainer.utils import nanstd as trl_nanstd

    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, NAN, 4.0, NAN], [3.0, NAN, NAN, NAN]])
    # row 0: mean .25, Σ(x−m)² = .5625 + 3·.0625 = .75, /3 → var .25, std .5; row 1: {2,4} → √2; row 2: one value → NaN
    ours = grpo.nanstd(x, dim=1)
    close(ours[:2], [0.5, math.sqrt(2.0)])
    assert torch.isnan(ours[2])
    torch.testing.assert_close(ours, trl_nanstd(x, dim=1), equal_nan=True)
    close(grpo.nanstd(x[0]), 0.5)


# ---------------------------------------------------------------------------------------------------------------------
# aggregate_rewards


def test_sum_then_normalize_weighted_sum_nan_as_zero():
    rewards_NF = torch.tensor([[1.0, 0.5], [0.0, NAN], [NAN, NAN], [2.0, 1.0]])
    out = grpo.aggregate_rewards(rewards_NF, torch.tensor([1.0, 2.0]), "sum_then_normalize")
    # 1 + 2·.5 = 2 · 0 + (skip) = 0 · all skipped → NaN (unscorable, as TRL) · 2 + 2·1 = 4
    close(out[[0, 1, 3]], [2.0, 0.0, 4.0])
    assert torch.isnan(out[2])


def test_normalize_then_sum_decoupled_per_group():
    # G = 2. group 0: F0 {1, 3}, F1 {2, NaN}; group 1: F0 {0, 2}, F1 {4, 6}
    rewards_NF = torch.tensor([[1.0, 2.0], [3.0, NAN], [0.0, 4.0], [2.0, 6.0]])
    out = grpo.aggregate_rewards(rewards_NF, torch.tensor([2.0, 1.0]), "normalize_then_sum", G=2)
    # F0 z-scores: ∓Z in both groups. F1 group 0 has one finite value → std undefined → contributes 0;
    # F1 group 1 z-scores ∓Z. Weighted: row0 = 2·(−Z) + 0 = −1.414114, row1 = +1.414114,
    # row2 = 2·(−Z) + (−Z) = −2.121170, row3 = +2.121170.
    close(out, [-2 * Z, 2 * Z, -3 * Z, 3 * Z])
    close(out, [-1.414114, 1.414114, -2.121170, 2.121170])


def test_normalize_then_sum_zero_std_reward_contributes_zero_and_unscorable_row_is_nan():
    rewards_NF = torch.tensor([[5.0, 1.0], [5.0, 0.0], [NAN, NAN], [1.0, 1.0]])
    out = grpo.aggregate_rewards(rewards_NF, torch.tensor([1.0, 1.0]), "normalize_then_sum", G=2)
    # group 0: F0 {5,5} std 0 → 0/1e-4 = 0; F1 {1,0}: mean .5, std √.5 → ±.5/(.707107+1e-4) = ±.707007.
    # group 1: row 2 all skipped → NaN; row 3 is alone (std undefined) → 0.
    close(out[[0, 1, 3]], [0.707007, -0.707007, 0.0])
    assert torch.isnan(out[2])


def test_aggregate_rewards_errors():
    r = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        grpo.aggregate_rewards(r, torch.ones(2), "mean")
    with pytest.raises(ValueError, match="weights_F"):
        grpo.aggregate_rewards(r, torch.ones(3), "sum_then_normalize")
    with pytest.raises(ValueError, match="group size G"):
        grpo.aggregate_rewards(r, torch.ones(2), "normalize_then_sum")
    with pytest.raises(ValueError, match="whole number of groups"):
        grpo.aggregate_rewards(r, torch.ones(2), "normalize_then_sum", G=3)


# ---------------------------------------------------------------------------------------------------------------------
# group_advantages / compute_advantages

REWARDS_8 = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # G = 4: one success of 4; all succeed


def test_group_advantages_group_scaling():
    adv = grpo.group_advantages(REWARDS_8, G=4, scale_rewards="group")
    # group 0: mean .25, unbiased std .5 → .75/.5001 = 1.499700, −.25/.5001 = −.499900; group 1: std 0 → 0 (no NaN)
    close(adv, [1.499700, -0.499900, -0.499900, -0.499900, 0.0, 0.0, 0.0, 0.0])


def test_group_advantages_no_scaling():
    adv = grpo.group_advantages(REWARDS_8, G=4, scale_rewards="none")
    close(adv, [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0])


def test_group_advantages_batch_scaling():
    adv = grpo.group_advantages(REWARDS_8, G=4, scale_rewards="batch")
    # batch mean 5/8; Σ(x−m)² = 5·.375² + 3·.625² = 1.875; /7 → std .517549; centred on the *group* mean as TRL
    # .75/(.517549+1e-4) = 1.448858, .25/.517649 = .482953
    close(adv, [1.448858, -0.482953, -0.482953, -0.482953, 0.0, 0.0, 0.0, 0.0])


def test_group_advantages_nan_rows_get_zero_and_are_left_out():
    rewards = torch.tensor([2.0, NAN, 0.0, 4.0])
    adv = grpo.group_advantages(rewards, G=2, scale_rewards="group")
    # group 0: one scored row → std undefined → 0 for both rows; group 1: mean 2, std √8 → ∓2/(2.828427+1e-4)
    close(adv, [0.0, 0.0, -0.707082, 0.707082])
    assert not torch.isnan(adv).any()


def test_group_advantages_zero_std_everywhere_is_zero():
    adv = grpo.group_advantages(torch.full((6,), 3.0), G=3, scale_rewards="group")
    close(adv, [0.0] * 6)
    adv = grpo.group_advantages(torch.full((6,), 3.0), G=3, scale_rewards="batch")
    close(adv, [0.0] * 6)


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo.group_advantages(REWARDS_8, G=4, scale_rewards="std")
    with pytest.raises(ValueError, match="whole number of groups"):
        grpo.group_advantages(REWARDS_8, G=3)


def test_compute_advantages_sum_then_normalize_matches_two_steps():
    rewards_NF = torch.stack([REWARDS_8, torch.zeros(8)], dim=1)
    adv, stats = grpo.compute_advantages(rewards_NF, torch.tensor([1.0, 0.5]), 4, "sum_then_normalize", "group")
    close(adv, [1.499700, -0.499900, -0.499900, -0.499900, 0.0, 0.0, 0.0, 0.0])
    close(stats["reward_mean"], 0.625)
    close(stats["frac_reward_zero_std"], 0.5)  # group 1 has zero std


def test_compute_advantages_normalize_then_sum_batch_normalises():
    rewards_NF = torch.tensor([[1.0, 2.0], [3.0, NAN], [0.0, 4.0], [2.0, 6.0]])
    adv, _ = grpo.compute_advantages(rewards_NF, torch.tensor([2.0, 1.0]), 2, "normalize_then_sum", "group")
    # aggregated [−2Z, 2Z, −3Z, 3Z] (see above), batch mean 0, unbiased std √((2·(2Z)² + 2·(3Z)²)/3) = 2.081519
    # → r/(2.081519+1e-4) = [−.679334, .679334, −1.019000, 1.019000]
    close(adv, [-0.679334, 0.679334, -1.019000, 1.019000])


def test_broadcast_advantages():
    alive = torch.tensor([[True, True, False], [True, False, False]])
    close(grpo.broadcast_advantages(torch.tensor([2.0, -1.0]), alive), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------------------
# filters


def test_dynamic_sampling_mask():
    success = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    # rates .25, 1, 0, .5
    assert grpo.dynamic_sampling_mask(success, 4, 0.1, 0.9).tolist() == [True, False, False, True]
    assert grpo.dynamic_sampling_mask(success, 4, 0.5, 0.5).tolist() == [False, False, False, True]
    assert grpo.dynamic_sampling_mask(success, 4, 0.0, 1.0).tolist() == [True] * 4
    # bounds are inclusive and exact: 7 of 10 is 0.7
    seven = torch.tensor([1] * 7 + [0] * 3)
    assert grpo.dynamic_sampling_mask(seven, 10, 0.7, 0.7).tolist() == [True]
    with pytest.raises(ValueError, match="lo ≤ hi"):
        grpo.dynamic_sampling_mask(success, 4, 0.9, 0.1)


def test_refill_groups_takes_first_kept_in_order():
    masks = [torch.tensor([True, False, True]), torch.tensor([False, False, True]), torch.tensor([True, True, True])]
    rounds, groups, report = grpo.refill_groups(masks, 3)
    # kept in order: (0,0) (0,2) (1,2) (2,0) (2,1) (2,2) → first three
    assert rounds.tolist() == [0, 0, 1] and groups.tolist() == [0, 2, 2]
    assert report == {"kept": 6, "dropped": 3, "selected": 3, "filled_with_dropped": 0, "short": 0, "rounds": 3}


def test_refill_groups_short_and_fill_with_dropped():
    masks = [torch.tensor([False, True]), torch.tensor([False, False])]
    rounds, groups, report = grpo.refill_groups(masks, 3)
    assert rounds.tolist() == [0] and groups.tolist() == [1]
    assert report["short"] == 2 and report["kept"] == 1 and report["dropped"] == 3
    rounds, groups, report = grpo.refill_groups(masks, 3, fill_with_dropped=True)
    # kept (0,1), then the first dropped ones (0,0), (1,0)
    assert rounds.tolist() == [0, 0, 1] and groups.tolist() == [1, 0, 0]
    assert report["filled_with_dropped"] == 2 and report["short"] == 0 and report["selected"] == 3


def test_group_row_indices():
    assert grpo.group_row_indices(torch.tensor([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]


def test_truncated_and_mask_truncated():
    alive = torch.tensor([[True, True, True], [True, True, True], [True, False, False]])
    success = torch.tensor([True, False, False])
    # row 0 succeeded at the last chunk, row 1 ran out of horizon, row 2 terminated early (failure)
    assert grpo.truncated_at_horizon(alive, success).tolist() == [False, True, False]
    assert grpo.mask_truncated(alive, success).tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    close(grpo.mask_truncated(alive.float(), success), [[1.0] * 3, [0.0] * 3, [1.0, 0.0, 0.0]])
    # another token mask (actions + subtask tokens, [N, 2T]) with the alive mask given separately
    tok = torch.cat([alive, alive], dim=1)
    assert grpo.mask_truncated(tok, success, alive_NT=alive)[1].tolist() == [False] * 6


# ---------------------------------------------------------------------------------------------------------------------
# losses

# Two rows, three tokens. Ratios row 0: [1.5, .5, 1.1] with A = +1; row 1: [1.5, .5, (masked)] with A = −1.
# ε_low = .2, ε_high = .28. Per token −min(ρA, clip(ρ, .8, 1.28)A):
#   row 0: 1.5 → −1.28 (clipped high) · .5 → −.5 (A > 0: low side not clipped) · 1.1 → −1.1     Σ = −2.88
#   row 1: 1.5 → +1.5 (A < 0: high side not clipped) · .5 → +.8 (clipped low)                  Σ = +2.3
LOGP_OLD = torch.zeros(2, 3)
MASK = torch.tensor([[True, True, True], [True, True, False]])
ADV = torch.tensor([1.0, -1.0])


def logp_new(requires_grad: bool = False) -> torch.Tensor:
    x = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.0]]))
    x[1, 2] = 1000.0  # padding garbage: exp would overflow if it were not masked
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("grpo", {}, (-2.88 / 3 + 2.3 / 2) / 2),  # row means −.96, 1.15 → .095
        ("bnpo", {}, (-2.88 + 2.3) / 5),  # −.116
        ("dr_grpo", {}, (-2.88 + 2.3) / (2 * 3)),  # −.096667 (constant defaults to T')
        ("dr_grpo", {"max_completion_length": 10}, (-2.88 + 2.3) / (2 * 10)),  # −.029
        ("dapo", {}, (-2.88 + 2.3) / 5),  # local token count: same as bnpo
        ("dapo", {"num_items": 10}, (-2.88 + 2.3) / 10),  # global token count given: −.058
    ],
)
def test_policy_loss_reductions(loss_type, kwargs, expected):
    loss, stats = grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, loss_type, 0.2, 0.28, **kwargs)
    close(loss, expected)
    close(stats["policy_loss"], expected)
    assert torch.isfinite(loss)


def test_policy_loss_clip_stats():
    _, stats = grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, "bnpo", 0.2, 0.28)
    close(stats["clip_ratio/low_mean"], 1 / 5)  # row 1 token .5 (A < 0)
    close(stats["clip_ratio/high_mean"], 1 / 5)  # row 0 token 1.5 (A > 0)
    close(stats["clip_ratio/region_mean"], 2 / 5)
    close(stats["ratio_mean"], (1.5 + 0.5 + 1.1 + 1.5 + 0.5) / 5)  # 1.02
    close(stats["ratio_max"], 1.5)
    close(stats["ratio_min"], 0.5)
    assert "kl" not in stats


def test_policy_loss_gradient_zero_on_clipped_tokens():
    x = logp_new(requires_grad=True)
    loss, _ = grpo.policy_loss(x, LOGP_OLD, ADV, MASK, "bnpo", 0.2, 0.28)
    loss.backward()
    # d(−ρA)/d logp = −ρA, divided by 5 tokens; clipped tokens and padding get 0
    close(x.grad, [[0.0, -0.5 / 5, -1.1 / 5], [1.5 / 5, 0.0, 0.0]])


def test_policy_loss_symmetric_clip_and_delta():
    # ε_high = .2: row 0 token 1.5 → −1.2 instead of −1.28 → bnpo (−2.8 + 2.3)/5 = −.1
    loss, _ = grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, "bnpo", 0.2, 0.2)
    close(loss, -0.1)
    loss, _ = grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, "bnpo", 0.2, None)  # None → ε_low, as TRL
    close(loss, -0.1)
    # δ = 1.4 caps the unclipped ratio: row 1 token 1.5 (A < 0) → +1.4 → (−2.88 + 2.2)/5 = −.136
    loss, _ = grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, "bnpo", 0.2, 0.28, delta=1.4)
    close(loss, -0.136)


def test_policy_loss_token_weights_and_per_token_advantages():
    w = torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    loss, _ = grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, "bnpo", 0.2, 0.28, token_weights=w)
    close(loss, (-1.28 - 0.5 - 0.55 + 2.3) / 5)  # −.006
    adv_NT = grpo.broadcast_advantages(ADV, MASK)
    loss2, _ = grpo.policy_loss(logp_new(), LOGP_OLD, adv_NT, MASK, "bnpo", 0.2, 0.28)
    close(loss2, -0.116)


def test_policy_loss_sequence_level():
    # row 0: ρ = (1.5·.5·1.1)^(1/3) = .825^(1/3) = .937889, inside the clip → −.937889 on each of 3 tokens
    # row 1: ρ = (1.5·.5)^(1/2) = .866025 → +.866025 on each of 2 tokens. bnpo: (−2.813666 + 1.732051)/5 = −.216323
    loss, _ = grpo.policy_loss(
        logp_new(), LOGP_OLD, ADV, MASK, "bnpo", 0.2, 0.28, importance_sampling_level="sequence"
    )
    close(loss, -0.216323)


def test_policy_loss_with_kl():
    # one token, ρ = 1, A = 1 → −1; ref = log 2 → k3 = 2 − log 2 − 1 = .306853; β = .1 → −1 + .0306853
    one = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = grpo.policy_loss(
        torch.zeros(1, 1),
        torch.zeros(1, 1),
        torch.ones(1),
        one,
        "grpo",
        logp_ref=torch.full((1, 1), math.log(2)),
        beta=0.1,
    )
    close(loss, -1 + 0.1 * 0.306853)
    close(stats["kl"], 0.306853)
    close(stats["policy_loss"], -1.0)
    with pytest.raises(ValueError, match="logp_ref"):
        grpo.policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), one, "grpo", beta=0.1)


def test_policy_loss_errors():
    with pytest.raises(ValueError, match="loss_type"):
        grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, "ppo")
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo.policy_loss(logp_new(), LOGP_OLD, ADV, MASK, importance_sampling_level="chunk")
    with pytest.raises(ValueError, match="shape"):
        grpo.policy_loss(logp_new(), LOGP_OLD[:, :2], ADV, MASK)


def test_kl_k3():
    # new = 0, ref = log 2: 2 − log 2 − 1 = .306853;  new = log 2, ref = 0: .5 + log 2 − 1 = .193147;  equal → 0
    new = torch.tensor([[0.0, math.log(2), -3.0]])
    ref = torch.tensor([[math.log(2), 0.0, -3.0]])
    close(grpo.kl_k3(new, ref), [[0.306853, 0.193147, 0.0]])


def test_nll_anchor_loss():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    close(grpo.nll_anchor_loss(logp, mask, torch.tensor([True, False])), 1.5)  # (1 + 2)/2
    close(grpo.nll_anchor_loss(logp, mask, torch.tensor([True, True])), 3.6)  # (1+2+4+5+6)/5
    zero = grpo.nll_anchor_loss(logp, mask, torch.tensor([False, False]))
    close(zero, 0.0)
    zero.backward()  # still attached to the graph: callers can always add it
    close(logp.grad, torch.zeros(2, 3).tolist())


# ---------------------------------------------------------------------------------------------------------------------
# randomised agreement with the formulas of trl.GRPOTrainer (transcribed from trl 1.16 as a reference)


def _trl_reference_advantages(r_NF, w_F, G, aggregation, scale_rewards):
    from trl.trainer.utils import nanstd as trl_nanstd

    unscorable = torch.isnan(r_NF).all(dim=1)
    if aggregation == "sum_then_normalize":
        r = (r_NF * w_F[None]).nansum(dim=1)
        r[unscorable] = NAN
        mean = torch.nanmean(r.view(-1, G), dim=1).repeat_interleave(G)
        std = trl_nanstd(r.view(-1, G), dim=1).repeat_interleave(G) if scale_rewards != "batch" else trl_nanstd(r)
        adv = r - mean if scale_rewards == "none" else (r - mean) / (std + 1e-4)
    else:
        g = r_NF.view(-1, G, r_NF.shape[1])
        z = ((g - torch.nanmean(g, dim=1, keepdim=True)) / (trl_nanstd(g, dim=1, keepdim=True) + 1e-4)).view_as(r_NF)
        r = (z * w_F[None]).nansum(dim=1)
        r[unscorable] = NAN
        adv = (r - torch.nanmean(r)) / (trl_nanstd(r) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
@pytest.mark.parametrize("scale_rewards", grpo.SCALE_REWARDS)
def test_advantages_agree_with_trl_reference(aggregation, scale_rewards):
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        G, B, F = 2 + trial % 4, 1 + trial % 3, 1 + trial % 3
        r = torch.randn(B * G, F, generator=gen, dtype=torch.float64)
        if trial % 2:
            r = (r > 0).double()  # binary success rewards: many zero-std groups
        r[torch.rand(B * G, F, generator=gen) < 0.2] = NAN
        w = torch.rand(F, generator=gen, dtype=torch.float64)
        ours, _ = grpo.compute_advantages(r, w, G, aggregation, scale_rewards)
        ref = _trl_reference_advantages(r.clone(), w, G, aggregation, scale_rewards)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
def test_policy_loss_agrees_with_trl_reference(level):
    gen = torch.Generator().manual_seed(1)
    N, T, L, beta, delta = 6, 5, 7, 0.05, 1.5
    for _ in range(10):
        new = 0.3 * torch.randn(N, T, generator=gen, dtype=torch.float64)
        old = new + 0.3 * torch.randn(N, T, generator=gen, dtype=torch.float64)
        ref = new + 0.2 * torch.randn(N, T, generator=gen, dtype=torch.float64)
        mask = (torch.rand(N, T, generator=gen) > 0.3).double()
        mask[:, 0] = 1
        adv = torch.randn(N, 1, generator=gen, dtype=torch.float64)
        lr = new - old
        lw = lr if level == "token" else ((lr * mask).sum(-1) / mask.sum(-1)).unsqueeze(-1)
        c1 = torch.exp(lw)
        c2 = torch.clamp(c1, 0.8, 1.28)
        ptl = -torch.min(torch.clamp(c1, max=delta) * adv, c2 * adv) + beta * grpo.kl_k3(new, ref)
        expected = {
            "grpo": ((ptl * mask).sum(-1) / mask.sum(-1)).mean(),
            "bnpo": (ptl * mask).sum() / mask.sum(),
            "dr_grpo": (ptl * mask).sum() / (N * L),
            "dapo": (ptl * mask).sum() / mask.sum(),
        }
        for loss_type, value in expected.items():
            got, _ = grpo.policy_loss(
                new, old, adv[:, 0], mask, loss_type, 0.2, 0.28, delta, L,
                importance_sampling_level=level, logp_ref=ref, beta=beta,
            )  # fmt: skip
            torch.testing.assert_close(got, value, atol=1e-12, rtol=0)


def test_a_policy_that_moved_far_keeps_the_loss_and_gradients_finite():
    """Chunk log-probs sum many action elements: after one large step ref − new or new − old can pass 88, where
    exp() overflows. The loss and its gradient must stay finite (a NaN gradient would poison every weight)."""
    new = torch.tensor([[-300.0, 0.5], [200.0, -0.2]], requires_grad=True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([-1.0, 1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, stats = grpo.policy_loss(new, old, adv, mask, logp_ref=torch.zeros(2, 2), beta=0.04)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(stats["kl"]) and torch.isfinite(new.grad).all()
    assert torch.isfinite(grpo.kl_k3(torch.tensor([-1000.0]), torch.tensor([0.0]))).all()
    # inside the clamp nothing changes
    close(grpo.kl_k3(torch.tensor([[0.0]]), torch.tensor([[math.log(2)]])), [[0.306853]])
