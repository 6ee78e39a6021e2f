"""LazyImages: imagined subgoal images decoded only where they are read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wla_tiny import tiny_obs, tiny_policy

from rewards.base import last_alive_index
from rollout.imagined import ImaginationEngine, freeze_snapshot
from wlarl.types import LazyImages, Observation


class CountingDecoder:
    """latents [M, 2, 4, 4] -> uint8 [M, 8, 8, 3] images whose pixels encode the latent's first value."""

    def __init__(self):
        self.frames = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.frames += z.shape[0]
        v = (z[:, 0, 0, 0] * 10).round().clamp(0, 255).to(torch.uint8)  # [M]
        return v[:, None, None, None].expand(-1, 8, 8, 3).contiguous()


def _lazy(n: int = 3, t: int = 4) -> tuple[LazyImages, CountingDecoder, torch.Tensor]:
    latents = torch.zeros(n, t, 2, 4, 4)
    latents[:, :, 0, 0, 0] = torch.arange(n * t, dtype=torch.float32).reshape(n, t)  # frame (i, j) has value i*t+j
    dec = CountingDecoder()
    return LazyImages(latents, dec, (8, 8, 3)), dec, latents


def test_behaves_like_the_tensor_without_decoding():
    x, dec, _ = _lazy()
    assert x.shape == (3, 4, 8, 8, 3) and x.dtype == torch.uint8 and x.ndim == 5 and len(x) == 3
    assert x.size(1) == 4 and x.device == torch.device("cpu") and not x.is_decoded
    assert dec.frames == 0


def test_indexing_batch_dims_decodes_only_the_selected_frames():
    x, dec, _ = _lazy()
    last = torch.tensor([3, 0, 2])
    final = x[torch.arange(3), last]  # one frame per row, the way subgoal_success reads the final frame
    assert dec.frames == 3
    assert final.shape == (3, 8, 8, 3) and final.dtype == torch.uint8
    assert final[:, 0, 0, 0].tolist() == [10 * 3, 10 * 4, 10 * 10]  # frames (0,3), (1,0), (2,2) → values 3, 4, 10
    row = x[1]
    assert dec.frames == 3 + 4 and row.shape == (4, 8, 8, 3)
    assert not x.is_decoded


def test_other_reads_decode_once_and_cache():
    x, dec, latents = _lazy()
    y = x.float() / 255  # tensor method + operator
    assert dec.frames == 12 and x.is_decoded
    assert y.shape == (3, 4, 8, 8, 3) and y.dtype == torch.float32
    assert np.asarray(x).shape == (3, 4, 8, 8, 3)
    assert torch.equal(torch.as_tensor(x), x.materialize())
    assert torch.stack([x[:, 0], x[:, 1]]).shape == (2, 3, 8, 8, 3)
    assert (x[..., 0] == x.materialize()[..., 0]).all()  # pixel-dim index reads the cache
    assert torch.equal(x.amax(dim=(2, 3, 4)), (latents[:, :, 0, 0, 0] * 10).to(torch.uint8))
    assert dec.frames == 12  # everything after the first full read came from the cache


def test_select_cat_and_move_stay_lazy():
    x, dec, _ = _lazy()
    sub = x.select(torch.tensor([2, 0]))
    both = torch.cat([sub, x])  # torch.cat on lazy items stays lazy
    assert isinstance(sub, LazyImages) and isinstance(both, LazyImages) and isinstance(x.to("cpu"), LazyImages)
    assert both.shape == (5, 4, 8, 8, 3) and dec.frames == 0
    assert both[0, 0, 0, 0, 0].item() == 10 * 8  # row 2, chunk 0
    mixed = torch.cat([x[:, 0], torch.zeros(1, 8, 8, 3, dtype=torch.uint8)])  # a decoded tensor and a plain one
    assert mixed.shape == (4, 8, 8, 3)
    with pytest.raises(IndexError, match="batch dims"):
        x.select((slice(None), slice(None), 0))


def test_a_decoder_that_returns_the_wrong_shape_is_named():
    bad = LazyImages(torch.zeros(2, 2, 4, 4), lambda z: torch.zeros(z.shape[0], 4, 4, 3, dtype=torch.uint8), (8, 8, 3))
    with pytest.raises(ValueError, match=r"decode returned .* expected uint8 \(2, 8, 8, 3\)"):
        bad.materialize()
    with pytest.raises(ValueError, match="image_shape must be"):
        LazyImages(torch.zeros(2, 2, 4, 4), lambda z: z, (8, 8))


def test_observation_keeps_lazy_images_through_index_and_cat():
    x, dec, _ = _lazy(n=3, t=1)
    frames = x.select((slice(None), 0))  # [3, 8, 8, 3] lazy
    obs = Observation(images=frames, states=torch.zeros(3, 2), instructions=["a"] * 3, task_names=["t"] * 3)
    both = Observation.cat([obs.index([2, 1]), obs])
    assert isinstance(both.images, LazyImages) and both.images.shape == (5, 8, 8, 3)
    assert dec.frames == 0
    assert both.images[0, 0, 0, 0].item() == 20


def test_engine_lazy_matches_eager_and_a_final_frame_read_decodes_n_frames():
    world = freeze_snapshot(tiny_policy("gaussian"))
    policy = tiny_policy("gaussian", seed=1)
    calls = []
    decode = world.decode_latents
    world.decode_latents = lambda z: calls.append(z.shape[0]) or decode(z)

    def run(mode: str):
        engine = ImaginationEngine(world, horizon=3, success_threshold=0.5, decode_images=mode)
        return engine.rollout(policy, tiny_obs(2), group_size=2, generator=torch.Generator().manual_seed(0))

    eager = run("eager")
    assert sum(calls) == 4 * 3  # every chunk of every row
    calls.clear()
    lazy = run("lazy")
    assert sum(calls) == 0 and isinstance(lazy.subgoal_images, LazyImages)
    torch.testing.assert_close(lazy.subgoal_latents, eager.subgoal_latents)
    last = last_alive_index(lazy.alive)
    final = lazy.subgoal_images[torch.arange(4), last]
    assert sum(calls) == 4  # N frames, not N·T
    diff = (final.int() - eager.subgoal_images[torch.arange(4), last].int()).abs().max().item()
    assert diff <= 1  # same latents; batch size may move a rounding step
    # the policy acts on imagined latents: its observations after the first hold lazy, still undecoded images
    assert isinstance(lazy.observations[1].images, LazyImages) and not lazy.observations[1].images.is_decoded
    with pytest.raises(ValueError, match="decode_images must be"):
        ImaginationEngine(world, decode_images=True)
