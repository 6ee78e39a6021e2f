"""Open-loop World-Expert training: K-chunk windows and `WLAPolicy.open_loop_world_losses` (chunk 1 from the real
observation, chunks 2..K from the World Expert's own predictions, every chunk scored against the real target)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from wla_tiny import tiny_batch, tiny_policy

from wlarl.data import SFTWindows, collate_windows, load_episodes, window_rows, write_episodes
from wlarl.data.episodes import chunk_window_rows
from wlarl.models.wla.modeling_wla import WORLD_TERMS

K = 3
F_DIM = 6
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft_wla.py"


def _policy(full_state_dim: int = 0, seed: int = 0):
    """A tiny policy whose World Expert is not the zero-initialised copy of its input (so that its predictions
    depend on what it reads), without latent noise (deterministic losses)."""
    policy = tiny_policy(seed=seed, full_state_dim=full_state_dim)
    policy.config.latent_noise_std = 0.0
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for lin in (policy.world_expert.latent_out, policy.world_expert.state_out):
            lin.weight.copy_(0.3 * torch.randn(lin.weight.shape, generator=g))
    return policy


def _chunk_batch(n: int = 6, chunks: int = K, seed: int = 0, full_state_dim: int = 0) -> dict:
    """K-chunk windows built from `tiny_batch`: chunk k's targets are those of tiny_batch(seed + k)."""
    parts = [tiny_batch(n, seed=seed + k) for k in range(chunks)]
    first = parts[0]
    batch = {
        "image": first["image"],
        "state": first["state"],
        "actions": torch.stack([p["actions"] for p in parts], 1),  # [N, K, H, A]
        "action_mask": torch.stack([p["action_mask"] for p in parts], 1),  # [N, K, H]
        "chunk_mask": torch.ones(n, chunks, dtype=torch.bool),
        "next_image": torch.stack([p["next_image"] for p in parts], 1),  # [N, K, H_img, W, 3]
        "next_state": torch.stack([p["next_state"] for p in parts], 1),  # [N, K, S]
        "next_success": torch.stack([p["next_success"] for p in parts], 1),  # [N, K]
        "subtask": first["subtask"],
        "chunk_subtasks": [[p["subtask"][(i + k) % n] for k, p in enumerate(parts)] for i in range(n)],
        "instruction": first["instruction"],
        "task_name": first["task_name"],
    }
    if full_state_dim:
        g = torch.Generator().manual_seed(seed)
        batch["full_state"] = torch.randn(n, full_state_dim, generator=g)
        batch["next_full_state"] = torch.randn(n, chunks, full_state_dim, generator=g)
    return batch


def _first_chunk(batch: dict) -> dict:
    """The one-chunk window batch (`collate_windows` of `SFTWindows`) of chunk 1 of K-chunk windows."""
    out = {k: v for k, v in batch.items() if k not in ("chunk_mask", "chunk_subtasks")}
    for key in ("actions", "action_mask", "next_image", "next_state", "next_success", "next_full_state"):
        if key in batch:
            out[key] = batch[key][:, 0]
    return out


def _values(losses: dict) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items()}


# ----------------------------------------------------------------------------------------------- windows
def test_chunk_window_rows_extend_window_rows_hand_computed():
    # rows 10..17: 7 actions at rows 10..16, final observation at row 17; H = 3, K = 3
    w = chunk_window_rows(10, 18, horizon=3, chunks=3)
    one = window_rows(10, 18, horizon=3)
    assert w["t"].tolist() == one["t"].tolist() == list(range(10, 17))
    assert w["actions"][0].tolist() == [[10, 11, 12], [13, 14, 15], [16, 16, 16]]
    assert w["valid"][0].tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    assert w["next"][0].tolist() == [13, 16, 17] and w["chunk_valid"][0].tolist() == [True] * 3
    # t = 13: chunk 1 has one real action (row 16); chunk 2 would start at row 19, past the final observation: it
    # holds still at the end and does not count
    assert w["next"][3].tolist() == [16, 17, 17] and w["chunk_valid"][3].tolist() == [True, True, False]
    assert w["actions"][3, 2].tolist() == [16, 16, 16] and not w["valid"][3, 2].any()
    assert w["valid"][3, 1].tolist() == [True, False, False]
    assert w["chunk_valid"][4].tolist() == [True, False, False]  # t = 14: the episode ends with chunk 0
    # chunk k of the window at t is the one-chunk window at t + kH, wherever that lies inside the episode
    for i, t in enumerate(w["t"]):
        for k in range(3):
            j = t + 3 * k - 10
            if j < len(one["t"]):
                assert w["actions"][i, k].tolist() == one["actions"][j].tolist()
                assert w["next"][i, k] == one["next"][j] and w["valid"][i, k].tolist() == one["valid"][j].tolist()
    with pytest.raises(ValueError, match="chunks"):
        chunk_window_rows(0, 5, horizon=2, chunks=0)


@pytest.fixture
def dataset(tmp_path, episode_factory):
    eps = [episode_factory(t=t, seed=i, task=f"task-{i}", success_at=min(4, t - 1)) for i, t in enumerate((9, 2, 6))]
    for ep in eps:  # distinct actions per step, so a wrong action row shows
        ep["action"] = ep["action"] * np.arange(1, 5, dtype=np.float32)[None] + 0.5 * ep["seed"]
    write_episodes(eps, tmp_path / "ds", {"image_size": [8, 8]})
    return load_episodes(tmp_path / "ds")


def test_chunk_windows_hold_the_real_targets_after_each_chunk(dataset):
    H = 2
    one, multi = SFTWindows(dataset, horizon=H), SFTWindows(dataset, horizon=H, chunks=K)
    assert len(multi) == len(one) == 9 + 2 + 6  # one window per observation with an action
    starts = {int(r): i for i, r in enumerate(one._row)}
    for i in range(len(multi)):
        item, r = multi[i], int(multi._row[i])
        assert item["actions"].shape == (K, H, 4) and item["next_image"].shape == (K, 8, 8, 3)
        first = one[i]
        for key in ("image", "state", "full_state", "subtask", "instruction", "task_name"):
            np.testing.assert_array_equal(item[key], first[key])
        for key in ("actions", "action_mask", "next_image", "next_state", "next_full_state", "next_success"):
            np.testing.assert_array_equal(item[key][0], first[key])  # chunk 0 is the one-chunk window
        for k in range(1, K):
            if item["chunk_mask"][k]:  # chunk k is the one-chunk window at t + kH of the same episode
                later = one[starts[r + k * H]]
                for key in ("actions", "action_mask", "next_image", "next_state", "next_success"):
                    np.testing.assert_array_equal(item[key][k], later[key], err_msg=f"{key} chunk {k}")
                assert item["chunk_subtasks"][k] == later["subtask"]
            else:
                assert not item["action_mask"][k].any()
    # the 2-step episode (rows 10..12) has one chunk: its windows keep it, the later chunks leave the loss
    short = [multi[i] for i in range(len(multi)) if multi[i]["task_name"] == "task-1"]
    assert [it["chunk_mask"].tolist() for it in short] == [[True, False, False]] * 2
    # windows whose last chunk has a real action: t = 0..4 of the 9-step episode, t = 0, 1 of the 6-step one
    assert multi.full_chunk_windows == 5 + 0 + 2
    batch = collate_windows([multi[i] for i in range(4)])
    assert batch["actions"].shape == (4, K, H, 4) and batch["chunk_mask"].shape == (4, K)
    assert len(batch["chunk_subtasks"]) == 4 and all(len(s) == K for s in batch["chunk_subtasks"])
    with pytest.raises(ValueError, match="chunks"):
        SFTWindows(dataset, horizon=H, chunks=0)


def test_recipe_window_batches_match_chunk_windows(dataset):
    spec = importlib.util.spec_from_file_location("sft_wla_recipe_open_loop", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    ref = SFTWindows(dataset, horizon=3, chunks=K)
    ours = mod.WindowBatches(dataset, 3, ["clean"], bc_successful_only=False, chunks=K)
    idx = np.arange(len(ref))
    got, want = ours.batch(idx), collate_windows([ref[i] for i in idx])
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key
    assert ours.batch(idx, chunks=1)["actions"].shape == (len(idx), 3, 4)  # the tokenizer stage reads one chunk
    with pytest.raises(ValueError, match="world_open_loop_chunks"):
        mod.SFTWLAConfig(world_open_loop_chunks=0)


# ----------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("full_state_dim", [0, F_DIM])
def test_one_chunk_open_loop_loss_is_the_sft_world_loss(full_state_dim):
    policy = _policy(full_state_dim)
    batch = _chunk_batch(full_state_dim=full_state_dim)
    one = _first_chunk(batch)
    sft = policy.sft_losses(one)
    k1 = {k: (v[:, :1] if k.startswith("next_") or k in ("actions", "action_mask", "chunk_mask") else v)
          for k, v in batch.items()}  # fmt: skip
    k1["chunk_subtasks"] = [s[:1] for s in batch["chunk_subtasks"]]
    for b in (one, k1):  # one-chunk windows, and K-chunk windows with K = 1
        ol = policy.open_loop_world_losses(b, chunks=1)
        torch.testing.assert_close(ol["loss/world_open_loop"], policy.world_loss(sft), rtol=1e-6, atol=0)
        torch.testing.assert_close(ol["loss"], ol["loss/world_open_loop"])
        for key in WORLD_TERMS:
            assert (key in ol) == (key in sft), key
            if key in sft:
                torch.testing.assert_close(ol[key], sft[key], rtol=1e-6, atol=0)
        torch.testing.assert_close(ol["loss/world_chunk1"], ol["loss/world_open_loop"])
    # K-chunk windows read with chunks=1 use chunk 1 only
    torch.testing.assert_close(
        policy.open_loop_world_losses(batch, chunks=1)["loss/world_open_loop"],
        policy.world_loss(sft),
        rtol=1e-6,
        atol=0,
    )


def test_later_chunks_read_the_models_own_prediction_not_the_real_frame():
    policy = _policy(F_DIM)
    batch = _chunk_batch(full_state_dim=F_DIM)
    base = _values(policy.open_loop_world_losses(batch))
    assert {f"loss/world_latent_chunk{k}" for k in (1, 2, 3)} <= base.keys()
    mean = np.mean([base[f"loss/world_chunk{k}"] for k in (1, 2, 3)])
    assert base["loss/world_open_loop"] == pytest.approx(mean, rel=1e-6)  # the chunks' mean, weighted as in SFT

    # The real observation at t + H (frame, state, full state) is only chunk 1's target: chunk 2 starts from the
    # prediction, so its loss and chunk 3's do not move when the real frame there changes.
    real_t1 = dict(batch)
    real_t1["next_image"] = batch["next_image"].clone()
    real_t1["next_image"][:, 0] = 255 - real_t1["next_image"][:, 0]
    real_t1["next_state"] = batch["next_state"].clone()
    real_t1["next_state"][:, 0] += 3.0
    real_t1["next_full_state"] = batch["next_full_state"].clone()
    real_t1["next_full_state"][:, 0] += 3.0
    got = _values(policy.open_loop_world_losses(real_t1))
    assert got["loss/world_chunk1"] > base["loss/world_chunk1"] + 1.0
    for k in (2, 3):
        assert got[f"loss/world_chunk{k}"] == base[f"loss/world_chunk{k}"], k

    # Perturbing chunk 2's real target moves chunk 2's loss and nothing before it.
    target2 = dict(batch)
    target2["next_image"] = batch["next_image"].clone()
    target2["next_image"][:, 1] = 255 - target2["next_image"][:, 1]
    got = _values(policy.open_loop_world_losses(target2))
    assert got["loss/world_latent_chunk2"] != base["loss/world_latent_chunk2"]
    assert got["loss/world_chunk1"] == base["loss/world_chunk1"]
    assert got["loss/world_chunk3"] == base["loss/world_chunk3"]

    # Feeding back the re-encoded frame (as ImaginationEngine(reencode=True)) changes chunk 2's input, not chunk 1's.
    reenc = _values(policy.open_loop_world_losses(batch, reencode=True))
    assert reenc["loss/world_chunk1"] == base["loss/world_chunk1"]
    assert reenc["loss/world_latent_chunk2"] != base["loss/world_latent_chunk2"]


def test_detached_feedback_trains_each_step_from_its_own_inputs():
    """detach=True and False compute the same losses; only BPTT sends chunk 3's error back into chunk 1's prediction."""
    policy = _policy().train()
    batch = _chunk_batch()
    grads = {}
    for detach in (True, False):
        policy.zero_grad(set_to_none=True)
        out = policy.open_loop_world_losses(batch, detach=detach)
        grads[detach] = _values(out)
        out["loss/world_chunk3"].backward()
        grads[detach] = (grads[detach], policy.world_expert.latent_out.weight.grad.clone())
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-6)
    assert not torch.allclose(grads[True][1], grads[False][1])


def test_chunks_past_the_episode_end_leave_the_loss():
    policy = _policy()
    batch = _chunk_batch()
    batch["chunk_mask"][:3, 2] = False  # rows 0..2 ended during chunk 2
    base = _values(policy.open_loop_world_losses(batch))
    moved = dict(batch, next_image=batch["next_image"].clone(), next_state=batch["next_state"].clone())
    moved["next_image"][:3, 2] = 255 - moved["next_image"][:3, 2]
    moved["next_state"][:3, 2] += 5.0
    assert _values(policy.open_loop_world_losses(moved)) == base
    batch["chunk_mask"][:, 1:] = False  # no row reaches chunk 2: its keys are absent, the mean is chunk 1's
    out = _values(policy.open_loop_world_losses(batch))
    assert "loss/world_chunk2" not in out and out["loss/world_open_loop"] == pytest.approx(out["loss/world_chunk1"])


def test_sft_on_chunk_windows_trains_the_world_open_loop_and_the_rest_on_chunk_1():
    policy = _policy()
    batch = _chunk_batch()
    multi, one = policy.sft_losses(batch), policy.sft_losses(_first_chunk(batch))
    for key in ("loss/action", "loss/subtask", "loss/recon"):
        torch.testing.assert_close(multi[key], one[key])
    ol = policy.open_loop_world_losses(batch)
    for key in ("loss/world_latent", "loss/world_state", "loss/world_chunk3", "loss/world_open_loop"):
        torch.testing.assert_close(multi[key], ol[key], rtol=1e-6, atol=0)
    assert "loss/world_chunk1" not in one  # one-chunk SFT logs the keys it always did
    torch.testing.assert_close(multi["loss"] - one["loss"], policy.world_loss(multi) - policy.world_loss(one))


def test_bad_chunks_and_batches_fail_clearly():
    policy = _policy()
    batch = _chunk_batch()
    for bad in (0, K + 1):
        with pytest.raises(ValueError, match=r"chunks=.* must lie in \[1, 3\]"):
            policy.open_loop_world_losses(batch, chunks=bad)
    with pytest.raises(ValueError, match=r"must lie in \[1, 1\]"):
        policy.open_loop_world_losses(_first_chunk(batch), chunks=2)
    with pytest.raises(KeyError, match="chunk_subtasks"):
        policy.open_loop_world_losses({k: v for k, v in batch.items() if k != "chunk_subtasks"})
    with pytest.raises(ValueError, match="next_state"):
        policy.open_loop_world_losses(dict(batch, next_state=batch["next_state"][:, :2]))
    with pytest.raises(ValueError, match="actions"):
        policy.open_loop_world_losses(dict(batch, actions=batch["actions"][..., :2]))
    with pytest.raises(KeyError, match="next_image"):
        policy.open_loop_world_losses({k: v for k, v in batch.items() if k != "next_image"})
    with pytest.raises(KeyError, match="next_full_state"):
        _policy(F_DIM).open_loop_world_losses(batch)
