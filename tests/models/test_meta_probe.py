"""The backbone state probe: a head that reads the full state from the meta-query states both experts read, in joint
SFT, its gradient reaching the backbone, so the backbone carries goal and object positions the frame shows. Saving,
loading and config errors are tested with the latent probe's (test_latent_probe.py)."""

from __future__ import annotations

import pytest
import torch
from wla_tiny import tiny_batch, tiny_config, tiny_processor

from wlarl.models.wla import WLAPolicy

F = 4


def _probe_policy(weight: float = 1.0) -> WLAPolicy:
    torch.manual_seed(0)
    proc = tiny_processor()
    cfg = tiny_config(vocab_size=proc.vocab_size, full_state_dim=F)
    cfg.meta_state_weight = weight
    policy = WLAPolicy(cfg, processor=proc).train()
    policy.set_normalization(torch.zeros(4), torch.ones(4), torch.zeros(3), torch.ones(3),
                             full_state_mean=torch.zeros(F), full_state_std=torch.ones(F))  # fmt: skip
    return policy


def _batch(n: int = 16) -> dict:
    """The full state's first entries follow the frame's brightness (tiny_batch scales it with the state)."""
    batch = tiny_batch(n)
    full = torch.zeros(n, F)
    full[:, 0] = batch["image"].float().mean(dim=(1, 2, 3)) / 64.0
    batch["full_state"], batch["next_full_state"] = full, full.clone()
    return batch


def test_probe_is_in_the_sft_loss_and_trains_the_backbone():
    policy = _probe_policy(0.5)
    batch = _batch()
    torch.manual_seed(1)
    out = policy.sft_losses(batch)
    assert "loss/meta_state" in out and torch.isfinite(out["loss/meta_state"])
    policy.zero_grad()
    out["loss/meta_state"].backward()
    grads = [p.grad for p in policy.backbone.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads), "the probe's gradient does not reach the backbone"
    # the weighted term is part of the total: the same seed without the probe term differs by exactly that much
    torch.manual_seed(1)
    with_probe = policy.sft_losses(batch)
    policy.config.meta_state_weight = 0.0
    torch.manual_seed(1)
    without = policy.sft_losses(batch)
    torch.testing.assert_close(with_probe["loss"] - without["loss"], 0.5 * with_probe["loss/meta_state"])


def test_probe_learns_to_read_the_state_from_the_backbone():
    policy = _probe_policy(1.0)
    batch = _batch()
    params = [*policy.backbone.parameters(), *policy.meta_probe.parameters(), policy.meta_queries]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = float(policy.sft_losses(batch)["loss/meta_state"].detach())
    for _ in range(60):
        loss = policy.sft_losses(batch)["loss/meta_state"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(policy.sft_losses(batch)["loss/meta_state"].detach()) < 0.3 * first


def test_no_probe_term_by_default():
    proc = tiny_processor()
    policy = WLAPolicy(tiny_config(vocab_size=proc.vocab_size, full_state_dim=F), processor=proc)
    assert "loss/meta_state" not in policy.sft_losses(_batch(4))


def _frames(n: int = 16) -> dict:
    """Single frames for `meta_state_loss`: image, state, full state, instruction and subtask per row."""
    batch = _batch(n)
    return {k: batch[k] for k in ("image", "state", "full_state", "instruction", "subtask")}


def test_meta_state_loss_on_frames_trains_backbone_not_tokenizer():
    policy = _probe_policy(1.0)
    frames = _frames()
    loss = policy.meta_state_loss(frames)
    assert loss.ndim == 0 and torch.isfinite(loss)
    policy.zero_grad()
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in policy.backbone.parameters())
    assert all(p.grad is None for p in policy.image_tokenizer.parameters()), "frames are encoded without gradient"
    # it is the probe's MSE on those frames: it falls when the backbone and the probe are trained on it
    params = [*policy.backbone.parameters(), *policy.meta_probe.parameters(), policy.meta_queries,
              *policy.latent_proj.parameters()]  # fmt: skip
    opt = torch.optim.Adam(params, lr=3e-3)
    first = float(loss.detach())
    for _ in range(60):
        step_loss = policy.meta_state_loss(frames)
        opt.zero_grad()
        step_loss.backward()
        opt.step()
    assert float(policy.meta_state_loss(frames).detach()) < 0.3 * first


def test_meta_state_loss_needs_the_probe():
    proc = tiny_processor()
    policy = WLAPolicy(tiny_config(vocab_size=proc.vocab_size, full_state_dim=F), processor=proc)
    with pytest.raises(RuntimeError, match="no backbone state probe"):
        policy.meta_state_loss(_frames(4))


def test_meta_state_loss_weighs_the_squared_error_per_row_and_dimension():
    policy = _probe_policy(1.0)
    frames = _frames(6)
    torch.manual_seed(3)
    plain = policy.meta_state_loss(frames)
    torch.manual_seed(3)
    doubled = policy.meta_state_loss(frames | {"full_state_weight": torch.full((6, F), 2.0)})
    torch.testing.assert_close(doubled, 2 * plain)
    assert float(policy.meta_state_loss(frames | {"full_state_weight": torch.zeros(6, F)})) == 0.0
    with pytest.raises(ValueError, match=r"full_state_weight'\]: expected shape \[6, 4\]"):
        policy.meta_state_loss(frames | {"full_state_weight": torch.ones(6, 3)})


def test_meta_state_loss_reads_clean_latents_without_noise():
    policy = _probe_policy(1.0).eval()
    frames = _frames(6)
    clean = [float(policy.meta_state_loss(frames, noise=False)) for _ in range(2)]
    assert clean[0] == clean[1], "without noise the probe's error on the same frames is deterministic"
    noisy = [float(policy.meta_state_loss(frames)) for _ in range(2)]
    assert noisy[0] != noisy[1] and clean[0] not in noisy, "SFT's latent noise is drawn afresh at every call"


def test_frame_losses_with_expert_chunks_train_the_action_expert():
    policy = _probe_policy(1.0)
    frames = _frames() | {"actions": _batch()["actions"]}  # the chunk follows the state, as an expert's would
    out = policy.frame_losses(frames, noise=False)
    assert set(out) == {"loss/meta_state_frames", "loss/action_frames"}
    # the probe term is meta_state_loss's, with or without chunks
    torch.testing.assert_close(out["loss/meta_state_frames"], policy.meta_state_loss(frames, noise=False))
    policy.zero_grad()
    out["loss/action_frames"].backward()
    for part in (policy.action_expert, policy.backbone):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in part.parameters())
    assert all(p.grad is None for p in policy.meta_probe.parameters()), "the action term does not train the probe"
    # the Action Expert learns the frames' chunks
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = float(out["loss/action_frames"].detach())
    for _ in range(60):
        loss = policy.frame_losses(frames, noise=False)["loss/action_frames"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(policy.frame_losses(frames, noise=False)["loss/action_frames"].detach()) < first - 1.0


def test_frame_losses_check_the_chunk_shape():
    policy = _probe_policy(1.0)
    frames = _frames(4) | {"actions": torch.zeros(4, 3, 3)}
    with pytest.raises(ValueError, match=r"batch\['actions'\]: expected shape \[4, 5, 3\], got \[4, 3, 3\]"):
        policy.frame_losses(frames)
