"""The World Expert's full-state path: it learns the full state's change in SFT, carries it through imagination
and hands it to rewards as `full_states`; without one (or with full_state_dim 0) nothing changes."""

from __future__ import annotations

import pytest
import torch
from wla_tiny import tiny_batch, tiny_obs, tiny_policy

from rewards.base import trajectory_reward_kwargs
from rollout.imagined import ImaginationEngine, freeze_snapshot
from wlarl.models.wla import WLAPolicy
from wlarl.types import Observation

F = 6


def _full_batch(n: int = 16) -> dict:
    """Windows whose next full state follows the current one and the actions (a learnable change)."""
    batch = tiny_batch(n)
    g = torch.Generator().manual_seed(1)
    full = torch.randn(n, F, generator=g)
    move = torch.zeros(n, F)
    move[:, :3] = batch["actions"].mean(1)  # the 'object' moves with the chunk
    batch["full_state"], batch["next_full_state"] = full, full + move
    return batch


def _with_full(obs: Observation, seed: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(obs.images, obs.states, obs.instructions, obs.task_names,
                       full_states=torch.randn(len(obs), F, generator=g))  # fmt: skip


def test_sft_learns_the_full_state_change_and_world_loss_weighs_it():
    policy = tiny_policy(full_state_dim=F).train()
    batch = _full_batch()
    opt = torch.optim.Adam(policy.world_expert.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        losses = policy.sft_losses(batch)
        if first is None:
            first = float(losses["loss/world_full_state"].detach())
            base = policy.world_loss({k: v for k, v in losses.items() if k != "loss/world_full_state"})
            weight = policy.config.world_full_state_weight
            torch.testing.assert_close(policy.world_loss(losses), base + weight * losses["loss/world_full_state"])
        opt.zero_grad()
        policy.world_loss(losses).backward()
        opt.step()
    assert float(policy.sft_losses(batch)["loss/world_full_state"]) < 0.3 * first
    with pytest.raises(KeyError, match="next_full_state"):
        policy.sft_losses({k: v for k, v in batch.items() if k != "next_full_state"})


def test_imagination_carries_the_predicted_full_state_into_rewards():
    policy = tiny_policy(full_state_dim=F)
    obs = _with_full(tiny_obs(2))
    pred = policy.imagine(obs, torch.zeros(2, policy.config.chunk_size, policy.config.action_dim))
    assert pred.full_states.shape == (2, F)
    torch.testing.assert_close(pred.full_states, obs.full_states)  # an untrained expert predicts no change
    traj = ImaginationEngine(freeze_snapshot(policy), horizon=3).rollout(policy, obs, group_size=2)
    assert traj.full_states.shape == (4, 3, F)
    torch.testing.assert_close(traj.full_states[:, 0], obs.full_states.repeat_interleave(2, 0))
    assert trajectory_reward_kwargs(traj)["full_states"] is traj.full_states
    # starts without a full state, or a World Expert that models none: no full states, same frames
    assert ImaginationEngine(freeze_snapshot(policy), horizon=2).rollout(policy, tiny_obs(2)).full_states is None
    plain = tiny_policy()
    assert ImaginationEngine(freeze_snapshot(plain), horizon=2).rollout(plain, obs).full_states is None
    with pytest.raises(ValueError, match="full_state_dim"):
        bad = Observation(obs.images, obs.states, obs.instructions, obs.task_names, full_states=torch.zeros(2, F + 1))
        policy.imagine(bad, torch.zeros(2, policy.config.chunk_size, policy.config.action_dim))


def test_full_state_stats_and_head_survive_save_and_load(tmp_path):
    policy = tiny_policy(full_state_dim=F)
    policy.set_normalization(
        torch.zeros(4), torch.ones(4), torch.zeros(3), torch.ones(3),
        full_state_mean=torch.arange(F, dtype=torch.float32), full_state_std=torch.full((F,), 2.0),
    )  # fmt: skip
    with torch.no_grad():
        policy.world_expert.full_state_out.bias.fill_(0.1)
    policy.save_pretrained(tmp_path / "p")
    loaded = WLAPolicy.from_pretrained(tmp_path / "p")
    assert loaded.config.full_state_dim == F and loaded.config.full_state_mean == list(range(F))
    obs = _with_full(tiny_obs(2))
    actions = torch.zeros(2, 5, 3)
    want = policy.imagine(obs, actions, decode=False).full_states
    torch.testing.assert_close(loaded.imagine(obs, actions, decode=False).full_states, want)
    torch.testing.assert_close(want, obs.full_states + 0.2)  # change 0.1 in normalised units × std 2


def test_observations_pick_up_full_states_from_dicts():
    item = {"image": torch.zeros(16, 16, 3, dtype=torch.uint8).numpy(), "state": [0.0] * 4, "instruction": "x"}
    assert Observation.from_dicts([item, item]).full_states is None
    full = [dict(item, full_state=[float(i)] * F) for i in range(3)]
    obs = Observation.from_dicts(full)
    assert obs.full_states.shape == (3, F)
    assert obs.index([2, 0]).full_states[:, 0].tolist() == [2.0, 0.0]
    assert Observation.cat([obs, obs]).full_states.shape == (6, F)
    assert Observation.from_dicts([dict(item, full_state=[])]).full_states is None  # an env without one


def test_state_success_signal_ends_rows_whose_predicted_full_state_the_state_model_calls_solved():
    policy = tiny_policy(full_state_dim=F)
    obs = _with_full(tiny_obs(4), seed=3)
    solved = obs.full_states[:, 0] > 0  # an untrained expert keeps the start's full state: these stay 'solved'
    assert 0 < int(solved.sum()) < 4
    seen = []

    def state_success(full_states, task_names):
        seen.append(len(task_names))
        return (full_states[:, 0] > 0).float()

    engine = ImaginationEngine(
        freeze_snapshot(policy), horizon=3, success_signal="state", state_success=state_success, state_threshold=0.5
    )
    traj = engine.rollout(policy, obs, group_size=2)
    assert traj.success.tolist() == solved.repeat_interleave(2).tolist()
    assert traj.alive[:, 1].tolist() == (~solved).repeat_interleave(2).tolist()  # success ends the row
    assert seen == [8, 8, 8] and traj.classifier_probs is None
    with pytest.raises(ValueError, match="full state"):
        engine.rollout(policy, tiny_obs(2))  # starts without full states: nothing to read
    with pytest.raises(ValueError, match="state_success"):
        ImaginationEngine(freeze_snapshot(policy), success_signal="state")
