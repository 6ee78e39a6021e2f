"""The state probes. The latent state probe: a head that reads the full state from image latents, its gradient
shaping the encoder so that latents keep small objects (a goal marker of a few pixels), in the tokenizer pre-stage
and in joint SFT. Saving, loading and config errors are tested here for the backbone state probe too."""

from __future__ import annotations

import pytest
import torch
from wla_tiny import IMAGE, tiny_batch, tiny_config, tiny_processor

from wlarl.models.wla import WLAConfig, WLAPolicy

F = 4


def _probe_policy(weight: float = 1.0) -> WLAPolicy:
    torch.manual_seed(0)
    proc = tiny_processor()
    cfg = tiny_config(vocab_size=proc.vocab_size, full_state_dim=F)
    cfg.latent_state_weight = weight
    return WLAPolicy(cfg, processor=proc).train()


def _dot_batch(n: int = 32, seed: int = 0) -> dict:
    """Frames with one 2x2 marker whose position is the full state's first two entries (the rest is noise-free)."""
    batch = tiny_batch(n, seed)
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, IMAGE - 2, (n, 2), generator=g)
    full = torch.zeros(n, F)
    full[:, :2] = cells.float()
    for key in ("image", "next_image"):
        img = batch[key].clone()
        for i, (r, c) in enumerate(cells.tolist()):
            img[i, r : r + 2, c : c + 2] = torch.tensor([255, 0, 0], dtype=torch.uint8)
        batch[key] = img
    batch["full_state"], batch["next_full_state"] = full, full.clone()
    return batch


def test_probe_trains_the_encoder_and_reads_the_marker():
    policy = _probe_policy()
    policy.set_normalization(torch.zeros(4), torch.ones(4), torch.zeros(3), torch.ones(3),
                             full_state_mean=torch.full((F,), 7.0), full_state_std=torch.full((F,), 4.0))  # fmt: skip
    batch = _dot_batch()
    out = policy.tokenizer_losses(batch)
    assert set(out) >= {"loss", "loss/recon", "loss/latent_state"}
    torch.testing.assert_close(out["loss"], out["loss/recon"] + out["loss/latent_state"])
    # the probe's gradient reaches the encoder (it is not trained on detached latents)
    policy.zero_grad()
    out["loss/latent_state"].backward()
    enc = [p.grad for n, p in policy.image_tokenizer.named_parameters() if n.startswith("enc") and p.grad is not None]
    assert enc and any(float(g.abs().sum()) > 0 for g in enc)
    params = [*policy.image_tokenizer.parameters(), *policy.latent_probe.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = float(out["loss/latent_state"].detach())
    for _ in range(150):
        loss = policy.tokenizer_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(policy.tokenizer_losses(batch)["loss/latent_state"]) < 0.3 * first
    # joint SFT carries the same term in its loss
    joint = policy.sft_losses(batch)
    assert "loss/latent_state" in joint and torch.isfinite(joint["loss"])


PROBES = [("latent_state_weight", "latent_probe"), ("meta_state_weight", "meta_probe")]


@pytest.mark.parametrize("weight_name, module_name", PROBES)
def test_probe_weights_save_and_load(tmp_path, weight_name, module_name):
    torch.manual_seed(0)
    proc = tiny_processor()
    cfg = tiny_config(vocab_size=proc.vocab_size, full_state_dim=F)
    setattr(cfg, weight_name, 0.1)
    policy = WLAPolicy(cfg, processor=proc)
    policy.save_pretrained(tmp_path / "p")
    loaded = WLAPolicy.from_pretrained(tmp_path / "p")
    assert getattr(loaded.config, weight_name) == 0.1
    for a, b in zip(getattr(policy, module_name).parameters(), getattr(loaded, module_name).parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("weight_name, module_name", PROBES)
def test_no_probe_by_default_and_clear_errors(weight_name, module_name):
    proc = tiny_processor()
    policy = WLAPolicy(tiny_config(vocab_size=proc.vocab_size, full_state_dim=F), processor=proc)
    assert getattr(policy, module_name) is None
    with pytest.raises(ValueError, match="full_state_dim > 0"):
        WLAConfig(**{weight_name: 0.5, "full_state_dim": 0})
    with pytest.raises(ValueError, match=weight_name):
        WLAConfig(**{weight_name: -1.0, "full_state_dim": F})


def test_latent_probe_loss_needs_the_probe():
    proc = tiny_processor()
    policy = WLAPolicy(tiny_config(vocab_size=proc.vocab_size, full_state_dim=F), processor=proc)
    assert "loss/latent_state" not in policy.tokenizer_losses(tiny_batch(4))
    with pytest.raises(RuntimeError, match="no latent probe"):
        policy.latent_state_loss(torch.zeros(2, 4, 4, 4), torch.zeros(2, F))
