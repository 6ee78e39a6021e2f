"""`refresh_world_model(open_loop_chunks=K)`: the simulator refresh trains the World Expert open loop over K chunks."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from wla_tiny import IMAGE, tiny_policy

from rollout.imagined import freeze_snapshot
from rollout.refresh import refresh_metrics, refresh_world_model
from wlarl.data import SFTWindows, collate_windows, load_episodes, write_episodes


def _blob_episodes(lengths, seed: int = 0) -> list[dict]:
    """A 4×4 blob moved by the first two action dims (state: its position), for the tiny policy (S=4, A=3)."""
    rng = np.random.default_rng(seed)
    eps = []
    for e, steps in enumerate(lengths):
        acts = np.concatenate([rng.uniform(-0.15, 0.15, (steps, 2)), np.zeros((steps, 1))], 1).astype(np.float32)
        traj = [rng.uniform(-0.5, 0.5, 2)]
        for a in acts:
            traj.append(np.clip(traj[-1] + a[:2] / 2, -0.9, 0.9))
        traj = np.array(traj, np.float32)
        imgs = np.zeros((steps + 1, IMAGE, IMAGE, 3), np.uint8)
        for t, p in enumerate(traj):
            i, j = ((p + 1) * 6).astype(int)
            imgs[t, j : j + 4, i : i + 4] = (200, 80, 40)
        eps.append({
            "image": imgs, "state": np.concatenate([traj, np.zeros((steps + 1, 2), np.float32)], 1),
            "action": acts, "reward": np.zeros(steps, np.float32), "success": np.arange(steps) >= steps - 2,
            "subtask": ["reach the goal"] * (steps + 1), "instruction": "reach the goal (reach-v3)",
            "task_name": "reach-v3", "seed": e, "noise_mode": "policy",
        })  # fmt: skip
    return eps


def _open_loop_error(policy, episodes, chunks: int = 3) -> dict[str, float]:
    """The K-chunk open-loop World-Expert losses over every window of `episodes` (no latent noise, no gradient)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_episodes(episodes, f"{tmp}/eps", {})
        windows = SFTWindows(load_episodes(f"{tmp}/eps"), policy.config.chunk_size, chunks=chunks)
        batch = collate_windows([windows[i] for i in range(len(windows))])
    noise, policy.config.latent_noise_std = policy.config.latent_noise_std, 0.0
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in policy.open_loop_world_losses(batch, chunks).items()}
    finally:
        policy.config.latent_noise_std = noise


def test_open_loop_refresh_lowers_the_three_chunk_error_on_its_training_data():
    eps = _blob_episodes([16] * 6)
    policy = tiny_policy()
    states, actions = np.concatenate([ep["state"] for ep in eps]), np.concatenate([ep["action"] for ep in eps])
    policy.set_normalization(states.mean(0), states.std(0), actions.mean(0), actions.std(0))  # as SFT sets them
    snapshot = freeze_snapshot(policy)
    tok_before = {k: v.clone() for k, v in snapshot.image_tokenizer.state_dict().items()}
    before = _open_loop_error(snapshot, eps)
    with torch.no_grad():  # as inside a trainer callback
        res = refresh_world_model(snapshot, eps, steps=30, lr=3e-3, batch_size=16, num_chunks=3, open_loop_chunks=3)
    after = _open_loop_error(snapshot, eps)
    assert after["loss/world_open_loop"] < 0.5 * before["loss/world_open_loop"], (before, after)
    # the state fed back twice: the error that compounds (~0.5 before, ~0.05 after 30 steps)
    assert after["loss/world_state_chunk3"] < 0.5 * before["loss/world_state_chunk3"], (before, after)
    assert res["loss_last"] < res["loss_first"] and res["open_loop_chunks"] == 3
    assert len(res["before"]["world_latent_mse"]) == len(res["after"]["world_latent_mse"]) == 3  # fidelity as before
    assert not any(p.requires_grad for p in snapshot.parameters()) and not snapshot.training
    assert all(torch.equal(tok_before[k], v) for k, v in snapshot.image_tokenizer.state_dict().items())


def test_open_loop_refresh_trains_on_k_chunk_windows_and_counts_short_episodes():
    snapshot = freeze_snapshot(tiny_policy())
    seen = []
    losses = type(snapshot).open_loop_world_losses

    def spy(batch, chunks=None, **kwargs):
        seen.append((tuple(batch["actions"].shape), chunks))
        return losses(snapshot, batch, chunks, **kwargs)

    snapshot.open_loop_world_losses = spy
    H = snapshot.config.chunk_size  # 5
    eps = _blob_episodes([3, 12, 8])  # 1, 3 and 2 chunks of H = 5 steps
    res = refresh_world_model(snapshot, eps, steps=2, lr=1e-3, batch_size=4, num_chunks=1, open_loop_chunks=3)
    assert seen == [((4, 3, H, 3), 3)] * 2
    assert res["windows"] == 3 + 12 + 8  # every observation with an action starts a window
    assert res["windows_all_chunks"] == 2  # t = 0, 1 of the 12-step episode reach chunk 3
    assert res["episodes_short"] == 2
    m = refresh_metrics(res)
    assert m["verify/refresh_open_loop_chunks"] == 3.0 and m["verify/refresh_episodes_short"] == 2.0
    assert m["verify/refresh_windows_all_chunks"] == 2.0

    one = refresh_world_model(snapshot, eps, steps=1, lr=1e-3, batch_size=4, num_chunks=1)
    assert seen[-1] == ((4, H, 3), 1)  # one-chunk windows, one chunk ahead, as before
    assert one["open_loop_chunks"] == 1 and one["episodes_short"] == 0 and one["windows_all_chunks"] == 23
    assert not any("open_loop" in k for k in refresh_metrics(one))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3", None])
def test_bad_open_loop_chunks_fail_before_any_work(bad):
    snapshot = freeze_snapshot(tiny_policy())
    with pytest.raises(ValueError, match="open_loop_chunks must be an integer >= 1"):
        refresh_world_model(snapshot, _blob_episodes([6]), steps=1, open_loop_chunks=bad)
