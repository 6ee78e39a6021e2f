"""WLA policy: shapes, exact log-probs, gradients, save/load, world on/off, SFT, input validation."""

from __future__ import annotations

import pytest
import torch
from wla_tiny import IMAGE, tiny_batch, tiny_obs, tiny_policy

from wlarl.models.wla import WLAPolicy, WLAProcessor
from wlarl.types import ActionSample, Observation, WorldPrediction

HEADS = ["gaussian", "flow"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [1, 3])
def test_act_shapes(policy, n):
    c = policy.config
    obs = tiny_obs(n)
    s = policy.act(obs, generator=gen())
    assert s.actions.shape == (n, c.chunk_size, c.action_dim)
    assert s.log_prob.shape == (n,)
    if c.action_head == "gaussian":
        assert s.log_prob_terms.shape == (n, c.chunk_size, c.action_dim)
    else:
        assert s.log_prob_terms.shape == (n, c.flow_steps, c.chunk_size, c.action_dim)
        assert s.extras["chain"].shape == (n, c.flow_steps + 1, c.chunk_size, c.action_dim)
    torch.testing.assert_close(s.log_prob_terms.flatten(1).sum(1), s.log_prob)
    length = s.subtask_ids.shape[1]
    assert 1 <= length <= c.max_subtask_tokens
    assert s.subtask_mask.shape == s.subtask_log_probs.shape == (n, length)
    assert s.subtask_mask[:, 0].all()
    assert (s.subtask_ids[~s.subtask_mask] == 0).all() and (s.subtask_log_probs[~s.subtask_mask] == 0).all()
    assert len(s.subtask_text) == n and all(isinstance(t, str) for t in s.subtask_text)
    assert torch.isfinite(s.log_prob).all()


def test_greedy_is_deterministic(policy, obs):
    a, b = policy.act(obs, sample=False), policy.act(obs, sample=False, generator=gen(5))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.subtask_ids, b.subtask_ids)
    c = policy.act(obs, generator=gen(1))
    assert not torch.equal(a.actions, c.actions)


@pytest.mark.parametrize("temperature", [1.0, 1.6])
@pytest.mark.parametrize("train_mode", [False, True])
def test_log_prob_matches_act(policy, obs, temperature, train_mode):
    s = policy.act(obs, temperature=temperature, generator=gen())
    policy.train(train_mode)
    lp = policy.log_prob(obs, s, temperature=temperature)
    torch.testing.assert_close(lp["action"], s.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp["subtask_tokens"], s.subtask_log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp["subtask"], s.subtask_log_probs.sum(1), atol=1e-5, rtol=0)
    assert lp["action"].requires_grad


def test_log_prob_after_cat_padding(policy):
    """Rows rescored in a batch with other rows (longer subtask padding, other instructions) keep their log-prob."""
    o1, o2 = tiny_obs(2, seed=1), tiny_obs(3, seed=2)
    s1, s2 = policy.act(o1, generator=gen(1)), policy.act(o2, generator=gen(2))
    lp = policy.log_prob(Observation.cat([o1, o2]), ActionSample.cat([s1, s2]))
    torch.testing.assert_close(lp["action"], torch.cat([s1.log_prob, s2.log_prob]), atol=1e-5, rtol=0)
    torch.testing.assert_close(lp["subtask"], torch.cat([s1.subtask_log_probs.sum(1), s2.subtask_log_probs.sum(1)]),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_gradients_reach_every_part(policy, obs):
    policy.train()
    s = policy.act(obs, generator=gen())
    lp = policy.log_prob(obs, s)
    (lp["action"].sum() + lp["subtask"].sum()).backward()
    for name in ("meta_queries", "backbone", "action_expert", "subtask_head"):
        grads = [p.grad for n, p in policy.named_parameters() if n.startswith(name) and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no policy-gradient reaches {name}"
    policy.zero_grad()
    policy.sft_losses(tiny_batch(4))["loss"].backward()
    for name in ("meta_queries", "backbone", "action_expert", "world_expert", "image_tokenizer", "latent_proj"):
        grads = [p.grad for n, p in policy.named_parameters() if n.startswith(name) and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no SFT gradient reaches {name}"


def test_world_on_off_same_actions(policy, obs):
    a = policy.act(obs, world=False, generator=gen(3))
    b = policy.act(obs, world=True, generator=gen(3))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.log_prob, b.log_prob)
    assert torch.equal(a.subtask_ids, b.subtask_ids)
    c = policy.config
    assert b.extras["world_latents"].shape == (len(obs), c.latent_channels, c.latent_size, c.latent_size)
    assert b.extras["world_states"].shape == (len(obs), c.state_dim)
    assert b.extras["world_success_logits"].shape == (len(obs),)


def test_save_load_round_trip(policy, obs, tmp_path):
    policy.set_normalization([1, 2, 3, 4], [2, 2, 2, 2], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    loaded = WLAPolicy.from_pretrained(tmp_path).eval()
    assert loaded.config.action_head == policy.config.action_head
    assert loaded.config.state_mean == [1, 2, 3, 4]
    for (k1, v1), (k2, v2) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    a, b = policy.act(obs, generator=gen(4), world=True), loaded.act(obs, generator=gen(4), world=True)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.log_prob, b.log_prob)
    assert a.subtask_text == b.subtask_text
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k]), k
    pa, pb = policy.imagine(obs, a.actions, sample=a), loaded.imagine(obs, a.actions, sample=a)
    assert torch.equal(pa.latents, pb.latents) and torch.equal(pa.images, pb.images)


@pytest.mark.parametrize("damage", ["truncate_weights", "corrupt_config"])
def test_a_damaged_checkpoint_error_names_the_file(policy, tmp_path, damage):
    policy.save_pretrained(tmp_path)
    if damage == "truncate_weights":
        weights = tmp_path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        culprit = f"corrupt weights file {tmp_path / 'model.safetensors'}"
    else:
        (tmp_path / "config.json").write_text('{"model_type": "wla", ')
        culprit = f"corrupt config file {tmp_path / 'config.json'}"
    with pytest.raises(ValueError, match="cannot load the checkpoint") as err:
        WLAPolicy.from_pretrained(tmp_path)
    assert culprit in str(err.value), str(err.value)


def test_imagine_closed_loop(policy, obs):
    c = policy.config
    o = obs
    for _ in range(8):
        s = policy.act(o, generator=gen())
        pred = policy.imagine(o, s.actions, sample=s)
        assert isinstance(pred, WorldPrediction)
        assert pred.images.shape == (len(obs), IMAGE, IMAGE, 3) and pred.images.dtype == torch.uint8
        assert pred.states.shape == (len(obs), c.state_dim) and torch.isfinite(pred.states).all()
        assert pred.latents.abs().max() < 1 and torch.isfinite(pred.success_logits).all()
        o = policy.next_observation(o, pred)
        assert torch.equal(o.latents, pred.latents) and o.instructions == obs.instructions
    # imagine without a sample uses the greedy subtask
    assert policy.imagine(obs, s.actions, decode=False).images is None


def test_test_time_scaling(policy, obs):
    k = 4
    calls = {}

    def scorer(o, candidates, predictions):
        calls["n"] = (len(candidates), len(predictions))
        assert predictions[0].images.shape == (len(o), IMAGE, IMAGE, 3)
        return torch.stack([-c.actions[:, 0, 0] for c in candidates], dim=1)  # prefer the smallest first action

    s = policy.act(obs, num_candidates=k, scorer=scorer, generator=gen())
    assert calls["n"] == (k, k)
    assert s.actions.shape[0] == len(obs) and s.extras["tts_scores"].shape == (len(obs), k)
    torch.testing.assert_close(-s.actions[:, 0, 0], s.extras["tts_scores"].max(1).values)
    lp = policy.log_prob(obs, s)
    torch.testing.assert_close(lp["action"], s.log_prob, atol=1e-5, rtol=0)
    assert policy.act(obs, num_candidates=k).actions.shape[0] == len(obs)  # default scorer: success logit


@pytest.mark.parametrize("head", HEADS)
def test_sft_steps_lower_every_loss(head):
    policy = tiny_policy(head).train()
    batch = tiny_batch(16)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for step in range(40):  # tokenizer pre-stage, as in the recipe: world-latent targets then move little
        torch.manual_seed(step)
        loss = policy.tokenizer_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def losses():
        torch.manual_seed(123)  # same latent/flow noise for the before/after comparison
        with torch.no_grad():
            return {k: v.item() for k, v in policy.sft_losses(batch).items() if k.startswith("loss")}

    before = losses()
    for step in range(60):
        torch.manual_seed(step)
        out = policy.sft_losses(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = losses()
    for key, value in before.items():
        assert after[key] < value, f"{key} did not go down: {value:.4f} -> {after[key]:.4f}"


def test_wrong_inputs_name_the_field(policy, obs):
    c = policy.config
    bad_states = Observation(obs.images, torch.zeros(len(obs), 7), obs.instructions, obs.task_names)
    with pytest.raises(ValueError, match=r"Observation.states.*\[N, 4\]"):
        policy.act(bad_states)
    bad_images = Observation(torch.zeros(len(obs), 8, 8, 3, dtype=torch.uint8), obs.states, obs.instructions,
                             obs.task_names)  # fmt: skip
    with pytest.raises(ValueError, match=rf"Observation.images.*\[N, {IMAGE}, {IMAGE}, 3\]"):
        policy.act(bad_images)
    with pytest.raises(TypeError, match=r"Observation.images.*uint8"):
        Observation(obs.images.float(), obs.states, obs.instructions, obs.task_names)
    with pytest.raises(ValueError, match=r"Observation.latents"):
        policy.act(
            Observation(obs.images, obs.states, obs.instructions, obs.task_names, latents=torch.zeros(3, 1, 2, 2))
        )
    with pytest.raises(ValueError, match=rf"actions.*\[3, {c.chunk_size}, {c.action_dim}\]"):
        policy.imagine(obs, torch.zeros(3, c.chunk_size + 1, c.action_dim))
    with pytest.raises(TypeError, match=r"images.*uint8"):
        policy.encode_images(torch.zeros(2, IMAGE, IMAGE, 3))
    with pytest.raises(ValueError, match="temperature"):
        policy.act(obs, temperature=0.0)
    batch = tiny_batch(2)
    batch["next_image"] = batch["next_image"][:, :8]
    with pytest.raises(ValueError, match=r"batch\['next_image'\]"):
        policy.sft_losses(batch)


def test_encode_decode_shapes(policy):
    c = policy.config
    imgs = tiny_obs(2).images
    z = policy.encode_images(imgs)
    assert z.shape == (2, c.latent_channels, c.latent_size, c.latent_size)
    out = policy.decode_latents(z)
    assert out.shape == imgs.shape and out.dtype == torch.uint8


def test_processor_round_trip(tmp_path):
    proc = WLAProcessor.build(["reach the goal (reach-v3)", "grasp the puck"], image_size=IMAGE)
    ids, mask = proc.encode_subtasks(["grasp the puck", "reach"])
    assert ids.shape == (2, 4) and mask.sum().item() == 6 and ids[0, 3].item() == proc.eos_id
    assert proc.decode_subtasks(ids, mask) == ["grasp the puck", "reach"]
    proc.save_pretrained(tmp_path)
    again = WLAProcessor.from_pretrained(tmp_path)
    assert torch.equal(again.encode_instructions(["reach the goal (reach-v3)"])[0],
                       proc.encode_instructions(["reach the goal (reach-v3)"])[0])  # fmt: skip
    assert again.image_size == IMAGE and again.vocab_size == proc.vocab_size


def test_missing_processor_is_explained(obs):
    p = tiny_policy()
    p.processor = None
    with pytest.raises(RuntimeError, match="processor"):
        p.act(obs)
