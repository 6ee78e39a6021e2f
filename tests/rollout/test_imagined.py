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


class SpyWorld(torch.nn.Module):
    """Wraps a frozen snapshot and records what imagination hands its World Expert."""

    def __init__(self, world):
        super().__init__()
        self.inner = world
        self.config = world.config
        self.calls: list[dict] = []

    def imagine(self, obs, actions, decode=True, sample=None):
        self.calls.append({"actions": actions.clone(), "sample": sample, "obs": obs})
        return self.inner.imagine(obs, actions, decode=decode, sample=sample)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def test_imagination_executes_bounded_actions_and_keeps_the_unclipped_log_prob(world):
    policy = tiny_policy("gaussian", seed=1)
    with torch.no_grad():
        policy.action_expert.log_std.fill_(0.5)  # std 1.6: most draws leave [-1, 1]
    spy = SpyWorld(world)
    traj = ImaginationEngine(spy, horizon=2).rollout(policy, tiny_obs(2), group_size=4)
    raw = traj.sampled_actions  # [N, T, H, A]
    assert (raw.abs() > 1).any(), "the test needs draws outside the bounds"
    for t, call in enumerate(spy.calls):
        assert call["actions"].abs().max() <= 1.0
        torch.testing.assert_close(call["actions"], raw[:, t].clamp(-1, 1))
    torch.testing.assert_close(traj.actions, raw.clamp(-1, 1))  # what rewards read: the executed actions
    for t in range(2):  # the log-prob is the unclipped draw's, so the update rescores the same sample exactly
        lp = policy.log_prob(traj.observations[t], traj.samples[t])["action"]
        torch.testing.assert_close(lp, traj.samples[t].log_prob, atol=1e-4, rtol=1e-5)


def test_the_simulator_ignores_the_subtask_the_policy_wrote(world):
    """The World Expert conditions on its own greedy subtask: the policy's text cannot steer its predictions."""
    policy = tiny_policy("gaussian", seed=1)
    world = freeze_snapshot(tiny_policy("gaussian", seed=2))
    with torch.no_grad():  # a World Expert whose predictions depend on the meta-queries (it reads the subtask there)
        for p in world.world_expert.parameters():
            p.add_(0.3 * torch.randn_like(p))
    spy = SpyWorld(world)
    ImaginationEngine(spy, horizon=2).rollout(policy, tiny_obs(2), group_size=2)
    assert all(call["sample"] is None for call in spy.calls)
    obs = tiny_obs(2)
    acts = torch.zeros(2, policy.config.chunk_size, policy.config.action_dim)
    sample = policy.act(obs)
    forged = sample.index([0, 1])
    forged.subtask_ids = torch.flip(forged.subtask_ids, dims=[0])  # another row's words
    greedy = world.imagine(obs, acts, decode=False)
    assert not torch.allclose(world.imagine(obs, acts, decode=False, sample=forged).latents, greedy.latents)
    engine_pred = ImaginationEngine(world, horizon=1)
    traj = engine_pred.rollout(policy, obs, group_size=1, sample=False)  # greedy actions: chunk = policy mean
    want = world.imagine(traj.observations[0], traj.actions[:, 0], decode=False)  # the world's own greedy subtask
    torch.testing.assert_close(traj.subgoal_latents[:, 0], want.latents)


def test_reencode_feeds_the_policy_encoder_latents_of_predicted_frames(world):
    policy = tiny_policy("gaussian", seed=1)
    traj = ImaginationEngine(world, horizon=3, reencode=True).rollout(policy, tiny_obs(2), group_size=2)
    for t in range(1, 3):
        obs = traj.observations[t]
        frames = traj.subgoal_images[:, t - 1]  # the decoded prediction after chunk t-1
        assert torch.equal(obs.images, frames)
        torch.testing.assert_close(obs.latents, world.encode_images(frames))
        assert not torch.allclose(obs.latents, traj.subgoal_latents[:, t - 1])  # not the raw World-Expert latent
    raw = ImaginationEngine(world, horizon=2).rollout(policy, tiny_obs(2), group_size=2)
    torch.testing.assert_close(raw.observations[1].latents, raw.subgoal_latents[:, 0])
    # rescoring all chunks at once still sees the inputs of sampling
    lp = policy.log_prob(Observation.cat(traj.observations), ActionSample.cat(traj.samples))["action"]
    torch.testing.assert_close(lp, torch.cat([s.log_prob for s in traj.samples]), atol=1e-4, rtol=1e-5)


def test_success_is_decided_by_the_configured_signal(world):
    policy = tiny_policy("gaussian", seed=1)
    calls = []

    def classifier(images, task_names):  # says success for push rows only
        calls.append(images.shape)
        return torch.tensor([0.9 if t == "push-v3" else 0.1 for t in task_names])

    obs = tiny_obs(2)  # row 0 reach, row 1 push
    by_cls = ImaginationEngine(world, horizon=3, success_signal="classifier", success_classifier=classifier,
                               success_threshold=1 - 1e-6).rollout(policy, obs, group_size=2)  # fmt: skip
    assert by_cls.success.tolist() == [False, False, True, True]  # the head never fires here; the classifier decides
    assert by_cls.lengths.tolist() == [3, 3, 1, 1]
    assert by_cls.classifier_probs.shape == (4, 3) and calls[0] == (4, 16, 16, 3)
    both = ImaginationEngine(world, horizon=3, success_signal="both", success_classifier=classifier,
                             success_threshold=1 - 1e-6).rollout(policy, obs, group_size=2)  # fmt: skip
    assert not both.success.any()  # the head disagrees
    both_lo = ImaginationEngine(world, horizon=3, success_signal="both", success_classifier=classifier,
                                success_threshold=1e-6).rollout(policy, obs, group_size=2)  # fmt: skip
    assert both_lo.success.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="success_classifier"):
        ImaginationEngine(world, success_signal="classifier")


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


def test_state_dynamics_predicts_the_full_state_and_the_policys_state():
    F = 7
    policy = tiny_policy("gaussian", seed=1, full_state_dim=F)
    world = freeze_snapshot(tiny_policy("gaussian", full_state_dim=F))
    obs = tiny_obs(2)
    obs = Observation(images=obs.images, states=obs.states, instructions=obs.instructions, task_names=obs.task_names,
                      full_states=torch.zeros(2, F))  # fmt: skip
    calls = []

    def dynamics(full, actions, task_names):  # the full state counts the action sum of every chunk
        calls.append((full.clone(), actions.clone(), list(task_names)))
        return full + actions.sum(dim=(1, 2))[:, None]

    traj = ImaginationEngine(world, horizon=3, state_dynamics=dynamics).rollout(policy, obs, group_size=2)
    assert len(calls) == 3 and calls[0][2] == ["reach-v3", "reach-v3", "push-v3", "push-v3"]
    executed = traj.actions.sum(dim=(2, 3))  # [N, T]
    torch.testing.assert_close(traj.full_states[..., 0], executed.cumsum(dim=1))
    torch.testing.assert_close(traj.states, traj.full_states[..., :4])  # the policy's state: the first S entries
    torch.testing.assert_close(traj.observations[1].states, traj.full_states[:, 0, :4])  # and the policy reads it
    torch.testing.assert_close(calls[1][0], traj.full_states[:, 0])  # chunk 2 starts from chunk 1's prediction
    plain = ImaginationEngine(world, horizon=3).rollout(policy, obs, group_size=2)
    assert not torch.allclose(plain.full_states, traj.full_states)  # the World Expert's head predicted otherwise
    with pytest.raises(ValueError, match="carry no full_states"):
        ImaginationEngine(world, horizon=1, state_dynamics=dynamics).rollout(policy, tiny_obs(2), group_size=2)
    with pytest.raises(ValueError, match="returned shape"):
        ImaginationEngine(world, horizon=1, state_dynamics=lambda f, a, t: f[:, :3]).rollout(policy, obs, group_size=2)
