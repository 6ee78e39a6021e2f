"""Paired verification on a simulator whose outcomes are known; open-loop fidelity; World-Expert refresh."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rollout.refresh import WorldRefresh, refresh_world_model
from rollout.verify import (
    Verifier,
    as_episode_list,
    fidelity_metrics,
    paired_verification,
    start_observation,
    world_fidelity,
)
from wlarl.types import WorldPrediction

SIZE = 16


def render(pos):
    """uint8 [N, 16, 16, 3]: one bright pixel per row at the position pos [N, 2] in [-1, 1]²."""
    pos = np.asarray(pos, np.float32).reshape(-1, 2)
    img = np.zeros((len(pos), SIZE, SIZE, 3), np.uint8)
    ij = np.clip(((pos + 1) * 7.5).round().astype(int), 0, SIZE - 1)
    img[np.arange(len(pos)), ij[:, 1], ij[:, 0]] = 255
    return img


class PointEnv(gym.Env):
    """Reach the origin from a seeded start at radius 0.5–1; success when |p| < 0.1 (actions clipped to 0.2)."""

    def __init__(self, task="point-v0"):
        self.task = task
        self.observation_space = gym.spaces.Dict(
            {"image": gym.spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8), "state": gym.spaces.Box(-2, 2, (2,))}
        )
        self.action_space = gym.spaces.Box(-0.2, 0.2, (2,), np.float32)

    def _obs(self):
        return {"image": render(self.pos)[0], "state": self.pos.copy(), "instruction": "reach the origin"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        a, r = self.np_random.uniform(0, 2 * np.pi), self.np_random.uniform(0.5, 1.0)
        self.pos = (np.array([np.cos(a), np.sin(a)]) * r).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + np.clip(action, -0.2, 0.2), -2, 2).astype(np.float32)
        success = bool(np.linalg.norm(self.pos) < 0.1)
        return self._obs(), 0.0, False, False, {"success": success}


def make_point_env(task):
    return PointEnv(task)


def steer(obs):
    return (-obs.states / 4)[:, None, :].repeat(1, 4, 1)  # [N, 4, 2]


def zero(obs):
    return torch.zeros(len(obs), 4, 2)


class Imagined:
    """A deterministic fake imagination result: success given per row, blank subgoal images."""

    def __init__(self, success, t=3):
        self.success = torch.tensor(success)
        self.subgoal_images = torch.zeros(len(success), t, SIZE, SIZE, 3, dtype=torch.uint8)


def fake_imagine(pattern):
    def imagine_fn(policy, start_obs, seeds):
        assert len(seeds) == len(start_obs)
        return Imagined([pattern[i % len(pattern)] for i in range(len(start_obs))])

    return imagine_fn


class ExactWorld:
    """A perfect world model of PointEnv: latent = position; used to check the fidelity bookkeeping."""

    class config:  # noqa: N801 - mimics a PretrainedConfig
        chunk_size = 4
        image_size = SIZE

    def encode_images(self, images):
        img = torch.as_tensor(images).numpy()[..., 0]  # [N, 16, 16]
        flat = img.reshape(len(img), -1).argmax(1)
        ij = np.stack([flat % SIZE, flat // SIZE], 1)  # [N, 2] (x, y)
        return torch.from_numpy(ij / 7.5 - 1).float()[:, :, None, None]  # [N, 2, 1, 1] (quantised position)

    def imagine(self, obs, actions, decode=True):
        pos = obs.states.clone()
        for t in range(actions.shape[1]):
            pos = (pos + actions[:, t].clamp(-0.2, 0.2)).clamp(-2, 2)
        images = torch.from_numpy(render(pos.numpy()))
        return WorldPrediction(
            latents=self.encode_images(images), states=pos, success_logits=torch.zeros(len(pos)), images=images
        )

    def next_observation(self, obs, pred):
        obs = type(obs)(pred.images, pred.states, obs.instructions, obs.task_names, pred.latents)
        return obs


def center_scorer(images, task_names):
    """Reward model on real frames: success when the bright pixel is at the centre of the canvas."""
    return (torch.as_tensor(images)[:, 7:9, 7:9].amax(dim=(1, 2, 3)) > 0).float()


COMMON = dict(env_fn=make_point_env, num_workers=0, max_episode_steps=32)


def test_confusion_on_known_outcomes():
    # Real: steer succeeds on every seed. Imagination says success on rows 0, 2 only → tp 2, fn 2.
    out = paired_verification(steer, fake_imagine([True, False]), ["a"], 4, seed=0, success_scorer=center_scorer,
                              world=ExactWorld(), **COMMON)  # fmt: skip
    assert (out["verify/tp"], out["verify/fp"], out["verify/fn"], out["verify/tn"]) == (2, 0, 2, 0)
    assert out["verify/agreement"] == 0.5 and out["verify/imagination_gap"] == pytest.approx(-0.5)
    assert out["verify/real_success"] == 1.0 and out["verify/imagined_precision"] == 1.0
    assert out["verify/reward_precision"] == 1.0 and out["verify/reward_recall"] == 1.0
    assert out["verify/a/imagination_gap"] == pytest.approx(-0.5)
    assert any(k.startswith("policy_") for k in out["videos"]) and any(k.startswith("replay_") for k in out["videos"])
    # Real: the zero policy fails everywhere. Imagination hallucinates success on every row → fp 4, gap +1.
    out = paired_verification(zero, fake_imagine([True]), ["a"], 4, seed=0, success_scorer=center_scorer, **COMMON)
    assert (out["verify/tp"], out["verify/fp"], out["verify/fn"], out["verify/tn"]) == (0, 4, 0, 0)
    assert out["verify/imagination_gap"] == 1.0 and out["verify/agreement"] == 0.0
    assert math.isnan(out["verify/reward_precision"])  # the reward model never said success: undefined
    assert math.isnan(out["verify/reward_recall"])  # no real success: undefined


def test_world_fidelity_exact_world_beats_copy():
    from rollout.real import rollout_policy

    res = rollout_policy(zero, ["a"], 3, seeds=0, **COMMON)  # zero actions: nothing moves
    fid = world_fidelity(ExactWorld(), res.episodes, num_chunks=2)
    assert fid["count"] == [3, 3] and fid["world_psnr"] == [100.0, 100.0] and fid["copy_psnr"] == [100.0, 100.0]
    res = rollout_policy(steer, ["a"], 3, seeds=0, **COMMON)
    fid = world_fidelity(ExactWorld(), res.episodes, num_chunks=3)
    lengths = [o.length for o in res.outcomes]
    assert fid["count"] == [sum(n >= k * 4 for n in lengths) for k in (1, 2, 3)]
    k1 = fid["world_psnr"][0]
    assert k1 == 100.0 and fid["copy_psnr"][0] < 40  # the point moved: copying the first frame is wrong
    assert fid["world_latent_mse"][0] < 1e-3 and fid["world_state_mse"][0] < 1e-10
    m = fidelity_metrics(fid)
    assert m["verify/world_psnr_chunk1"] == 100.0 and "verify/copy_psnr_changed_chunk1" in m


def test_verifier_buffers_and_varies_seeds():
    v = Verifier(fake_imagine([True]), ["a", "b"], episodes=3, seed=5, seed_stride=100, **COMMON)
    assert v.episodes_per_task == 2 and v.seeds() == [5, 6]
    out = v(steer, 0)
    assert v.seeds() == [105, 106] and len(v.buffer) == 4 and "real" not in out
    assert out["verify/imagination_gap"] == 0.0


# ------------------------------------------------------------------------------------- refresh (tiny WLA)
def _tiny_policy():
    from wlarl.models.wla import WLAConfig, WLAPolicy, WLAProcessor, tiny_llama_config

    torch.manual_seed(0)
    proc = WLAProcessor.build(["reach the goal (reach-v3)", "reach the goal"], image_size=SIZE,
                              max_instruction_tokens=16, max_subtask_tokens=8)  # fmt: skip
    cfg = WLAConfig(
        image_size=SIZE, latent_size=4, latent_channels=4, tokenizer_channels=[8, 8, 8], state_dim=4, action_dim=3,
        chunk_size=4, backbone_config=tiny_llama_config(hidden_size=32, num_layers=1, num_heads=4),
        vocab_size=proc.vocab_size, max_instruction_tokens=16, max_subtask_tokens=8, num_meta_queries=2,
        action_hidden=32, world_hidden=32, world_layers=1, world_heads=4,
    )  # fmt: skip
    return WLAPolicy(cfg, processor=proc).eval()


def _blob_episodes(n=6, steps=16, seed=0):
    """A 4×4 blob moved by the actions: enough structure for the World Expert to learn something."""
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(n):
        pos = rng.uniform(-0.5, 0.5, 2)
        acts = np.concatenate([rng.uniform(-0.1, 0.1, (steps, 2)), np.zeros((steps, 1))], 1).astype(np.float32)
        traj = [pos]
        for a in acts:
            traj.append(np.clip(traj[-1] + a[:2], -0.9, 0.9))
        traj = np.array(traj, np.float32)
        imgs = np.zeros((steps + 1, SIZE, SIZE, 3), np.uint8)
        for t, p in enumerate(traj):
            i, j = ((p + 1) * 6).astype(int)
            imgs[t, j : j + 4, i : i + 4] = (200, 80, 40)
        eps.append({
            "image": imgs, "state": np.concatenate([traj, np.zeros((steps + 1, 2), np.float32)], 1),
            "action": acts, "reward": np.zeros(steps, np.float32), "success": np.zeros(steps, bool),
            "subtask": ["reach the goal"] * (steps + 1), "instruction": "reach the goal (reach-v3)",
            "task_name": "reach-v3", "seed": e, "noise_mode": "policy",
        })  # fmt: skip
    return eps


def test_refresh_lowers_world_error():
    from rollout.imagined import freeze_snapshot

    snapshot = freeze_snapshot(_tiny_policy())
    eps = _blob_episodes()
    tok_before = {k: v.clone() for k, v in snapshot.image_tokenizer.state_dict().items()}
    with torch.no_grad():  # as inside a trainer callback
        res = refresh_world_model(snapshot, eps, steps=40, lr=3e-3, batch_size=16, num_chunks=2)
    assert res["loss_last"] < res["loss_first"]
    before, after = np.nanmean(res["before"]["world_latent_mse"]), np.nanmean(res["after"]["world_latent_mse"])
    assert after < before, (before, after)
    # Re-frozen, and the image tokenizer untouched (the live policy reads the snapshot's latents).
    assert not any(p.requires_grad for p in snapshot.parameters()) and not snapshot.training
    assert all(torch.equal(tok_before[k], v) for k, v in snapshot.image_tokenizer.state_dict().items())


def test_refresh_trains_the_sft_weighted_world_loss():
    """The refresh minimises `WLAPolicy.world_loss` (SFT weights), not an unweighted sum of the world terms."""
    from rollout.imagined import freeze_snapshot

    snapshot = freeze_snapshot(_tiny_policy())
    c = snapshot.config
    c.world_latent_weight, c.world_state_weight, c.world_success_weight = 0.0, 2.0, 0.0
    batch = None

    def spy(losses):
        nonlocal batch
        batch = losses
        return type(snapshot).world_loss(snapshot, losses)

    snapshot.world_loss = spy
    res = refresh_world_model(snapshot, _blob_episodes(n=2, steps=8), steps=1, lr=0.0, batch_size=4, num_chunks=1)
    assert batch is not None and float(batch["loss/world_latent"].detach()) > 0  # a term the weights switch off
    assert res["loss_first"] == pytest.approx(2.0 * float(batch["loss/world_state"].detach()), rel=1e-5)


def test_world_refresh_trains_on_the_verifier_buffer():
    from rollout.imagined import freeze_snapshot

    snapshot = freeze_snapshot(_tiny_policy())
    verifier = Verifier(fake_imagine([True]), ["a"], episodes=1, **COMMON)
    refresh = WorldRefresh(snapshot, verifier, steps=2, lr=1e-3, batch_size=4, num_chunks=1)
    assert refresh(None, 0) == {}  # nothing gathered yet
    verifier.buffer = _blob_episodes(n=2, steps=8)
    m = refresh(None, 1)
    assert m["verify/refresh_windows"] == 16.0 and math.isfinite(m["verify/refresh_loss_last"])


def test_start_observation_is_the_first_frame():
    eps = _blob_episodes(n=2, steps=4)
    obs = start_observation(eps)
    assert obs.images.shape == (2, SIZE, SIZE, 3) and obs.images.dtype == torch.uint8
    assert torch.equal(obs.images[1], torch.from_numpy(eps[1]["image"][0])) and obs.task_names == ["reach-v3"] * 2


def test_as_episode_list_reads_dataset(tmp_path):
    from wlarl.data import load_episodes, write_episodes

    eps = _blob_episodes(n=2, steps=5)
    write_episodes(eps, tmp_path / "ds", {})
    back = as_episode_list(load_episodes(tmp_path / "ds"))
    assert len(back) == 2 and back[0]["action"].shape == (5, 3) and back[0]["image"].shape == (6, SIZE, SIZE, 3)
    assert np.allclose(back[1]["action"], eps[1]["action"])


# ------------------------------------------------------------------------------------- Meta-World
def _metaworld_env(task):
    from rollout.sims import make_env

    return make_env(task, image_size=32, state_mode="full", max_episode_steps=60)


def _expert_policy(obs):
    """Meta-World's scripted expert on the 39-d state (state_mode='full'), one action per query: [N, 1, 4]."""
    from metaworld.policies import ENV_POLICY_MAP

    acts = [ENV_POLICY_MAP[t]().get_action(s.double().numpy()) for t, s in zip(obs.task_names, obs.states)]
    return torch.from_numpy(np.clip(np.stack(acts), -1, 1)).float()[:, None]


@pytest.mark.metaworld
def test_paired_verification_metaworld_expert_vs_zero():
    pytest.importorskip("metaworld", reason="needs the metaworld extra: pip install -e '.[metaworld]'")
    # spawn: a forked child of a process that already rendered with EGL can hang in its first render.
    kw = dict(env_fn=_metaworld_env, num_workers=2, start_method="spawn", max_episode_steps=60)
    good = paired_verification(_expert_policy, fake_imagine([True]), ["reach-v3"], 2, seed=0, **kw)
    bad = paired_verification(lambda o: torch.zeros(len(o), 4, 4), fake_imagine([True]), ["reach-v3"], 2, seed=0, **kw)
    assert good["verify/real_success"] == 1.0 and good["verify/tp"] == 2 and good["verify/imagination_gap"] == 0.0
    assert bad["verify/real_success"] == 0.0 and bad["verify/fp"] == 2 and bad["verify/imagination_gap"] == 1.0
    # Same seeds → same start states on both sides of the pairing.
    assert np.array_equal(good["real"].episodes[0]["state"][0], bad["real"].episodes[0]["state"][0])
