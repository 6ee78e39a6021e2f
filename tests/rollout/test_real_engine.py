"""RealEngine: GRPO rollouts in the real simulator with the imagination engine's protocol (fields, shapes, row
order), identical group starts, on-policy log-probs, alive/success from the simulator, the real-interaction count."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from support import requires_metaworld
from wla_tiny import tiny_processor

from rollout.imagined import ImaginationEngine, freeze_snapshot
from rollout.real import EnvWorkerPool, reset_start_states
from rollout.real_engine import SUCCESS_LOGIT, RealEngine
from wlarl.models.wla import WLAConfig, WLAPolicy, tiny_llama_config
from wlarl.types import ActionSample, Observation, Trajectories

H = 5  # the tiny policy's chunk
MW_KWARGS = {"image_size": 16}


def mw_policy(seed: int = 0) -> WLAPolicy:
    """A tiny WLA policy that fits Meta-World (state 4, action 4, 16 px frames) and CountEnv alike."""
    torch.manual_seed(seed)
    proc = tiny_processor()
    cfg = WLAConfig(
        image_size=16, latent_size=4, latent_channels=4, tokenizer_channels=[8, 8, 8], state_dim=4, action_dim=4,
        chunk_size=H, backbone_config=tiny_llama_config(hidden_size=32, num_layers=2, num_heads=4),
        vocab_size=proc.vocab_size, max_instruction_tokens=16, max_subtask_tokens=8, num_meta_queries=2,
        action_hidden=32, world_hidden=32, world_layers=1, world_heads=4,
    )  # fmt: skip
    return WLAPolicy(cfg, processor=proc).eval()


class CountEnv(gym.Env):
    """Succeeds at step `seed` whatever the actions (seeds > 1000: never). Frame pixels and state[3] count the steps
    taken, state[0] is seed / 1000, full_state = (steps, seed): what the engine returns after each chunk is checkable.
    """

    metadata = {"render_modes": []}

    def __init__(self, task="count-v0"):
        self.task = task
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "state": gym.spaces.Box(-10, 10, (4,), np.float32),
                "instruction": gym.spaces.Text(64),
            }
        )
        self.action_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        self.seed_, self.t = 0, 0

    def _obs(self):
        img = np.full((16, 16, 3), min(self.t, 255), np.uint8)
        state = np.array([self.seed_ / 1000, 0.0, 0.0, self.t], np.float32)
        return {"image": img, "state": state, "instruction": "reach the goal (reach-v3)"}

    def _info(self):
        return {"success": 0 < self.seed_ <= self.t, "full_state": np.array([self.t, self.seed_], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.t = int(seed), 0
        return self._obs(), {"full_state": np.array([0, self.seed_], np.float32)}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, False, self._info()


def make_count_env(task, **kwargs):
    return CountEnv(task, **kwargs)


def _count_starts(seeds: list[int]) -> tuple[Observation, torch.Tensor]:
    starts = [reset_start_states(["count-v0"], 1, seed=s, env_fn=make_count_env)[0] for s in seeds]
    return Observation.from_dicts(starts), torch.tensor(seeds)


# ----------------------------------------------------------------------------------------- Meta-World
@pytest.fixture(scope="module")
def mw_run():
    """One real rollout of G=3 samples of 3 starts (reach seed 100000, push seed 100000, reach seed 100001), T=2."""
    policy = mw_policy()
    starts = reset_start_states(["reach-v3"], 2, env_kwargs=MW_KWARGS) + reset_start_states(
        ["push-v3"], 1, env_kwargs=MW_KWARGS
    )
    starts = [starts[0], starts[2], starts[1]]  # reach, push, reach: task names alternate
    obs = Observation.from_dicts(starts)
    seeds = torch.tensor([s["seed"] for s in starts])
    engine = RealEngine(freeze_snapshot(policy), max_episode_steps=2 * H, num_workers=0, env_kwargs=MW_KWARGS,
                        slots_per_worker=3)  # fmt: skip
    torch.manual_seed(1)
    traj = engine.rollout(policy, obs, group_size=3, temperature=1.0, seeds=seeds)
    return {"policy": policy, "starts": obs, "seeds": seeds, "engine": engine, "traj": traj}


@requires_metaworld
def test_protocol_matches_the_imagination_engine(mw_run):
    policy, starts, real = mw_run["policy"], mw_run["starts"], mw_run["traj"]
    B, G, T = len(starts), 3, 2
    N = B * G
    imagined = ImaginationEngine(freeze_snapshot(policy), horizon=T).rollout(policy, starts, group_size=G)
    set_fields = {f.name for f in dataclasses.fields(real) if getattr(real, f.name) is not None}
    imagined_fields = {f.name for f in dataclasses.fields(imagined) if getattr(imagined, f.name) is not None}
    assert set_fields - {"full_states", "env_steps"} == imagined_fields
    assert {"full_states", "env_steps"} <= set_fields
    assert len(real.observations) == len(imagined.observations) == T
    assert len(real.samples) == len(imagined.samples) == T
    for t in range(T):
        for name in ("images", "states", "latents"):
            assert getattr(real.observations[t], name).shape == getattr(imagined.observations[t], name).shape, name
        assert real.samples[t].actions.shape == imagined.samples[t].actions.shape == (N, H, 4)
        assert real.samples[t].log_prob.shape == imagined.samples[t].log_prob.shape == (N,)
    for name in ("subgoal_images", "subgoal_latents", "states", "success_logits", "alive", "success"):
        assert tuple(getattr(real, name).shape) == tuple(getattr(imagined, name).shape), name
    assert real.subgoal_images.shape == (N, T, 16, 16, 3) and real.subgoal_images.dtype == torch.uint8
    assert real.alive.dtype == torch.bool and real.success.dtype == torch.bool
    assert real.group_size == imagined.group_size == G
    want_tasks = [starts.task_names[b] for b in range(B) for _ in range(G)]  # row b*G + g
    assert real.task_names == imagined.task_names == want_tasks
    assert real.task_names[:G] == ["reach-v3"] * G and real.task_names[G : 2 * G] == ["push-v3"] * G
    assert real.instructions == [starts.instructions[b] for b in range(B) for _ in range(G)]
    assert real.engine == "real" and imagined.engine == "imagined"
    assert real.env_steps.shape == (N,) and real.env_steps.dtype == torch.long
    assert (real.env_steps >= 1).all() and (real.env_steps <= T * H).all()
    assert real.full_states.shape == (N, T, 39)
    assert real.action_bounds == (-1.0, 1.0)
    # the real state after each chunk is the hand part of the 39-d Meta-World observation
    torch.testing.assert_close(real.states, real.full_states[..., :4])
    assert set(real.success_logits.abs().unique().tolist()) == {SUCCESS_LOGIT}


@requires_metaworld
def test_the_rows_of_a_group_start_from_one_mujoco_state(mw_run):
    engine, traj, starts = mw_run["engine"], mw_run["traj"], mw_run["starts"]
    G = 3
    sims = [r["sim_state"] for r in engine.last_result.rollouts]
    assert len(sims) == 9 and all(s is not None and s.dtype == np.float64 for s in sims)
    for b in range(3):
        for g in range(1, G):
            np.testing.assert_array_equal(sims[b * G], sims[b * G + g])
    # reach seed 100000 (group 0) and reach seed 100001 (group 2): same task, other layout
    assert sims[0].shape == sims[2 * G].shape and not np.array_equal(sims[0], sims[2 * G])
    first = traj.observations[0]
    for b in range(3):
        rows = list(range(b * G, (b + 1) * G))
        for r in rows[1:]:
            assert torch.equal(first.images[r], first.images[rows[0]])
            assert torch.equal(first.states[r], first.states[rows[0]])
        # ... and it is the recorded start (the frame re-rendered by the reset matches the start's)
        assert torch.equal(first.images[rows[0]], starts.images[b])
        torch.testing.assert_close(first.states[rows[0]], starts.states[b])
    # the samples of a group differ (GRPO needs spread), though they start alike
    assert not torch.equal(traj.samples[0].actions[0], traj.samples[0].actions[1])


@requires_metaworld
def test_rescoring_the_rollout_reproduces_the_sampling_log_probs(mw_run):
    policy, traj = mw_run["policy"], mw_run["traj"]
    N, T = traj.num_rows, traj.horizon
    with torch.no_grad():
        lp = policy.log_prob(Observation.cat(traj.observations), ActionSample.cat(traj.samples))
    new = lp["action"].view(T, N).T  # [N, T]
    old = torch.stack([s.log_prob for s in traj.samples], dim=1)  # [N, T]
    alive = traj.alive
    assert alive.any()
    torch.testing.assert_close(new[alive], old[alive], atol=1e-4, rtol=0)
    # the latents the policy read travel with the observations: those of chunk t+1 encode the frame after chunk t
    for t in range(T - 1):
        torch.testing.assert_close(traj.observations[t + 1].latents, traj.subgoal_latents[:, t])


@requires_metaworld
def test_pool_workers_give_what_in_process_runs_give(mw_run):
    """Greedy rollouts are deterministic: a (spawned) pool worker and the in-process runner agree exactly (fork is no
    option once this process has an EGL context: a forked child hangs in its first render)."""
    policy, starts, seeds = mw_run["policy"], mw_run["starts"], mw_run["seeds"]
    starts, seeds = starts.index([0, 1]), seeds[:2]
    local = RealEngine(freeze_snapshot(policy), max_episode_steps=H, num_workers=0, env_kwargs=MW_KWARGS)
    want = local.rollout(policy, starts, group_size=2, sample=False, seeds=seeds)
    with EnvWorkerPool(1, env_kwargs=MW_KWARGS, start_method="spawn", slots_per_worker=4) as pool:
        remote = RealEngine(freeze_snapshot(policy), max_episode_steps=H, pool=pool, env_kwargs=MW_KWARGS,
                            timeout_s=120)  # fmt: skip
        got = remote.rollout(policy, starts, group_size=2, sample=False, seeds=seeds)
    assert remote.last_result.worker_failures == [] and remote.last_result.episodes_started == 4
    assert torch.equal(got.subgoal_images, want.subgoal_images)
    torch.testing.assert_close(got.full_states, want.full_states)
    assert torch.equal(got.env_steps, want.env_steps) and torch.equal(got.alive, want.alive)


# ----------------------------------------------------------------------------------------- CountEnv
def test_alive_ends_at_the_first_real_success_and_env_steps_count_it():
    """Success steps 1, 5, 7 and never, with H=5 and T=3: alive, success, env_steps and frames follow the simulator."""
    policy = mw_policy()
    seeds = [1, 5, 7, 5000]
    starts, seed_t = _count_starts(seeds)
    engine = RealEngine(freeze_snapshot(policy), max_episode_steps=3 * H, num_workers=0, env_fn=make_count_env)
    assert engine.horizon == 3
    G = 2
    traj = engine.rollout(policy, starts, group_size=G, seeds=seed_t)
    chunks = {1: 1, 5: 1, 7: 2, 5000: 3}  # chunks executed: the one holding the success step ends the episode
    steps = {1: 1, 5: 5, 7: 7, 5000: 15}  # env steps: a chunk stops at its success step
    for i in range(traj.num_rows):
        s = seeds[i // G]
        n = chunks[s]
        assert traj.alive[i].tolist() == [t < n for t in range(3)], (s, traj.alive[i])
        assert bool(traj.success[i]) == (s < 1000)
        assert int(traj.env_steps[i]) == steps[s]
        assert int(traj.lengths[i]) == n
        # success_logits: +SUCCESS_LOGIT for the chunk that succeeded, - for those before it
        want_logits = [SUCCESS_LOGIT if (s < 1000 and t == n - 1) else -SUCCESS_LOGIT for t in range(n)]
        assert traj.success_logits[i, :n].tolist() == want_logits
        # frames, states and full states after each chunk are the simulator's (step counter), padded with the last
        after = [min((t + 1) * H, steps[s]) for t in range(3)]
        assert traj.subgoal_images[i, :, 0, 0, 0].tolist() == after
        assert traj.states[i, :, 3].tolist() == after
        assert traj.full_states[i, :, 0].tolist() == after and (traj.full_states[i, :, 1] == s).all()
        # the observation the policy acted on at chunk t is the frame before it
        for t in range(n):
            assert int(traj.observations[t].states[i, 3]) == t * H
    res = engine.last_result
    assert res.episodes_started == len(seeds) * G and int(traj.env_steps.sum()) == res.env_steps
    # subgoal latents encode the real frames after each chunk (padding included)
    N, T = traj.num_rows, traj.horizon
    flat = traj.subgoal_images.reshape(N * T, 16, 16, 3)
    want = engine.world.encode_images(flat).reshape(N, T, *traj.subgoal_latents.shape[2:])
    torch.testing.assert_close(traj.subgoal_latents, want, atol=1e-5, rtol=1e-4)
    # the real fields travel with rows taken and joined (what dynamic sampling does)
    part = Trajectories.cat([traj.index([6, 7]), traj.index([0])])
    assert part.engine == "real" and part.env_steps.tolist() == [15, 15, 1]
    assert torch.equal(part.full_states, traj.full_states[[6, 7, 0]])


def test_a_pool_with_several_slots_gives_the_in_process_rollout():
    policy = mw_policy()
    starts, seeds = _count_starts([2, 8, 5000])
    local = RealEngine(freeze_snapshot(policy), max_episode_steps=2 * H, num_workers=0, env_fn=make_count_env)
    want = local.rollout(policy, starts, group_size=2, sample=False, seeds=seeds)
    with EnvWorkerPool(2, env_fn=make_count_env, start_method="fork", slots_per_worker=2) as pool:
        engine = RealEngine(freeze_snapshot(policy), max_episode_steps=2 * H, pool=pool, env_fn=make_count_env)
        got = engine.rollout(policy, starts, group_size=2, sample=False, seeds=seeds)
    assert got.task_names == want.task_names
    for name in ("alive", "success", "env_steps", "subgoal_images", "states", "full_states", "success_logits"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for t in range(got.horizon):
        torch.testing.assert_close(got.samples[t].actions, want.samples[t].actions)
    assert engine.last_cost["episodes"] == 6 and engine.last_cost["worker_failures"] == 0


# ----------------------------------------------------------------------------------------- errors
def test_a_rollout_needs_the_seeds_of_its_starts():
    policy = mw_policy()
    starts, seeds = _count_starts([3, 4])
    engine = RealEngine(freeze_snapshot(policy), max_episode_steps=H, num_workers=0, env_fn=make_count_env)
    with pytest.raises(ValueError, match="seed"):
        engine.rollout(policy, starts, group_size=2)
    with pytest.raises(ValueError, match="seed"):
        engine.rollout(policy, starts, group_size=2, seeds=torch.tensor([3, -1]))  # a dataset frame, no reset seed
    with pytest.raises(ValueError, match="expected 2 seeds"):
        engine.rollout(policy, starts, group_size=2, seeds=torch.tensor([3]))
    with pytest.raises(ValueError, match="generator"):
        engine.rollout(policy, starts, group_size=2, seeds=seeds, generator=torch.Generator())


def test_a_start_that_is_not_its_reset_is_refused():
    policy = mw_policy()
    starts, seeds = _count_starts([3, 4])
    engine = RealEngine(freeze_snapshot(policy), max_episode_steps=H, num_workers=0, env_fn=make_count_env)
    engine.rollout(policy, starts, group_size=2, seeds=seeds)  # the recorded starts are their resets
    moved = dataclasses.replace(starts, states=starts.states.clone())
    moved.states[1, 1] += 0.5  # a perturbed (or mid-episode) start
    with pytest.raises(ValueError, match="reset"):
        engine.rollout(policy, moved, group_size=2, seeds=seeds)
    with pytest.raises(ValueError, match="reset"):
        engine.rollout(policy, starts, group_size=2, seeds=seeds.flip(0))  # seeds that rebuild other starts


def test_episodes_longer_than_max_episode_steps_are_refused():
    world = freeze_snapshot(mw_policy())
    with pytest.raises(ValueError, match="max_episode_steps"):
        RealEngine(world, max_episode_steps=2 * H, horizon=3, num_workers=0, env_fn=make_count_env)
    with pytest.raises(ValueError, match="shorter than one chunk"):
        RealEngine(world, max_episode_steps=H - 1, num_workers=0, env_fn=make_count_env)
    engine = RealEngine(world, max_episode_steps=2 * H + 3, num_workers=0, env_fn=make_count_env)
    assert engine.horizon == 2 and engine.chunk_size == H  # the chunks that fit; H read from the policy
    starts, seeds = _count_starts([3])
    with pytest.raises(ValueError, match="exceeds max_episode_steps"):
        engine.rollout(world, starts, group_size=2, horizon=3, seeds=seeds)
