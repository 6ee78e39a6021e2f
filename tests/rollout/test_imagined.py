"""Imagination: the batched engine and the gymnasium views over a frozen World Expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from wla_tiny import tiny_obs, tiny_policy  # noqa: E402

from rollout.imagined import ImaginationEngine, ImaginedEnv, ImaginedVectorEnv, freeze_snapshot  # noqa: E402
from wlarl.types import ActionSample, Observation  # noqa: E402


def _starts(n: int = 4) -> list[dict]:
    obs = tiny_obs(n)
    return [
        {"image": obs.images[i].numpy(), "state": obs.states[i].numpy(), "instruction": obs.instructions[i],
         "task_name": obs.task_names[i], "seed": i}
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world():
    return freeze_snapshot(tiny_policy("gaussian"))


def test_freeze_snapshot_is_a_frozen_copy():
    policy = tiny_policy("gaussian")
    snap = freeze_snapshot(policy)
    assert all(not p.requires_grad for p in snap.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not torch.equal(next(policy.parameters()), next(snap.parameters()))


def test_engine_shapes_groups_and_on_policy_log_probs(world):
    policy = tiny_policy("gaussian", seed=1)
    engine = ImaginationEngine(world, horizon=3, success_threshold=0.5)
    B, G = 2, 3
    traj = engine.rollout(policy, tiny_obs(B), group_size=G, temperature=1.0)
    N, T, H, A = B * G, 3, policy.config.chunk_size, policy.config.action_dim
    assert traj.num_rows == N and traj.horizon == T
    assert traj.actions.shape == (N, T, H, A)
    assert traj.subgoal_images.shape == (N, T, 16, 16, 3) and traj.subgoal_images.dtype == torch.uint8
    assert traj.states.shape == (N, T, 4) and traj.success_logits.shape == (N, T)
    assert traj.alive[:, 0].all()
    # rows are b*G + g: every row of group b shares its start's instruction
    assert traj.instructions[:G] == [tiny_obs(B).instructions[0]] * G
    # samples within a group differ (the policy samples)
    assert not torch.allclose(traj.actions[0], traj.actions[1])
    # the stored log-probs are the sampling policy's: recomputing them gives the same numbers
    for t in range(T):
        lp = policy.log_prob(traj.observations[t], traj.samples[t])["action"]
        torch.testing.assert_close(lp, traj.samples[t].log_prob, atol=1e-4, rtol=1e-5)


def test_log_probs_over_all_chunks_at_once_match_sampling(world):
    """The trainer rescores every (observation, chunk) pair in one batch: it must see the inputs the policy acted on.

    Start frames are encoded once and imagined observations carry the World Expert's latents, so no chunk is
    re-encoded from a decoded image (which would shift the log-probs and the importance ratios).
    """
    policy = tiny_policy("gaussian", seed=1)
    traj = ImaginationEngine(world, horizon=3).rollout(policy, tiny_obs(2), group_size=2)
    assert all(o.latents is not None for o in traj.observations)
    obs, sample = Observation.cat(traj.observations), ActionSample.cat(traj.samples)
    lp = policy.log_prob(obs, sample)["action"]
    torch.testing.assert_close(lp, torch.cat([s.log_prob for s in traj.samples]), atol=1e-4, rtol=1e-5)


def test_engine_terminates_on_predicted_success(world):
    policy = tiny_policy("gaussian", seed=1)
    lo = ImaginationEngine(world, horizon=3, success_threshold=1e-6).rollout(policy, tiny_obs(2), group_size=2)
    assert lo.success.all() and (lo.lengths == 1).all()
    hi = ImaginationEngine(world, horizon=3, success_threshold=1 - 1e-6).rollout(policy, tiny_obs(2), group_size=2)
    assert not hi.success.any() and (hi.lengths == 3).all()


def test_engine_rejects_bad_settings(world):
    with pytest.raises(ValueError, match="horizon"):
        ImaginationEngine(world, horizon=0)
    with pytest.raises(ValueError, match="success_threshold"):
        ImaginationEngine(world, success_threshold=1.5)


def test_imagined_env_passes_gymnasium_env_checker(world):
    env = ImaginedEnv(world, _starts(), horizon=3)
    check_env(env, skip_render_check=True)


def test_imagined_vector_env_steps_truncates_and_autoresets(world):
    env = ImaginedVectorEnv(world, _starts(), num_envs=3, horizon=2, success_threshold=1 - 1e-6)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (3, 16, 16, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (3, 4) and len(obs["instruction"]) == 3
    act = np.zeros((3, *env.single_action_space.shape), np.float32)
    _, r1, term, trunc, info = env.step(act)
    assert r1.shape == (3,) and not trunc.any() and not term.any()
    assert info["success_prob"].shape == (3,)
    _, _, term, trunc, _ = env.step(act)
    assert trunc.all()  # T = 2 chunks
    _, r3, term, trunc, _ = env.step(act)  # NEXT_STEP autoreset: this step only resets
    assert not trunc.any() and np.all(r3 == 0.0)
    with pytest.raises(ValueError, match=r"\[N, H, A\]"):
        env.step(np.zeros((3, 1, 1), np.float32))


def test_imagined_vector_env_is_deterministic_per_seed(world):
    env = ImaginedVectorEnv(world, _starts(), num_envs=2, horizon=3)
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    np.testing.assert_array_equal(a["image"], b["image"])
    act = np.full((2, *env.single_action_space.shape), 0.3, np.float32)
    env.reset(seed=5)
    s1 = env.step(act)[0]
    env.reset(seed=5)
    s2 = env.step(act)[0]
    np.testing.assert_array_equal(s1["state"], s2["state"])
