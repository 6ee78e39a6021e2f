"""Action-conditioned fidelity: within-group R², correlation and spread of a simulator's predictions."""

import numpy as np
import pytest
import torch

from rollout.action_fidelity import fidelity_table, open_loop_full_states, within_group_fidelity


def _groups(seed=0, B=4, G=6, D=3):
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(B, D))
    real = start[:, None] + rng.normal(scale=0.1, size=(B, G, D))
    return start, real


def test_perfect_prediction_explains_all_within_group_variation():
    start, real = _groups()
    m = within_group_fidelity(real, real, start, dims=(0, 1, 2))
    assert m["within_r2"] == pytest.approx(1.0)
    assert m["within_corr"] == pytest.approx(1.0)
    assert m["spread_ratio"] == pytest.approx(1.0)
    assert m["error"] == pytest.approx(0.0)
    assert m["copy_error"] > 0.05


def test_action_blind_prediction_scores_zero_r2_however_good_its_mean():
    start, real = _groups()
    blind = np.repeat(real.mean(axis=1, keepdims=True), real.shape[1], axis=1)  # the right mean, one per group
    m = within_group_fidelity(blind, real, start, dims=(0, 1, 2))
    assert m["within_r2"] == pytest.approx(0.0, abs=1e-12)
    assert m["spread_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(m["within_corr"])  # a constant prediction has no correlation
    assert m["group_mean_error"] == pytest.approx(0.0, abs=1e-12)


def test_reversed_prediction_is_worse_than_blind():
    start, real = _groups()
    mean = real.mean(axis=1, keepdims=True)
    flipped = mean - (real - mean)
    m = within_group_fidelity(flipped, real, start, dims=(0, 1, 2))
    assert m["within_r2"] == pytest.approx(-3.0)
    assert m["within_corr"] == pytest.approx(-1.0)
    assert m["spread_ratio"] == pytest.approx(1.0)


def test_only_selected_dims_count():
    start, real = _groups(D=5)
    pred = real.copy()
    pred[..., 3:] += np.random.default_rng(1).normal(size=pred[..., 3:].shape)  # noise outside dims 0–2
    assert within_group_fidelity(pred, real, start, dims=(0, 1, 2))["within_r2"] == pytest.approx(1.0)
    assert within_group_fidelity(pred, real, start, dims=(3, 4))["within_r2"] < 0.5


def test_no_real_variation_gives_nan_not_a_number_that_looks_fine():
    start = np.zeros((2, 3))
    real = np.ones((2, 4, 3))
    m = within_group_fidelity(real + 0.1, real, start, dims=(0, 1, 2))
    assert np.isnan(m["within_r2"]) and np.isnan(m["spread_ratio"])
    assert m["error"] == pytest.approx(np.sqrt(3 * 0.01))


def test_shapes_are_checked():
    start, real = _groups()
    with pytest.raises(ValueError, match=r"\[B, G, D\]"):
        within_group_fidelity(real[0], real[0], start, dims=(0,))
    with pytest.raises(ValueError, match="start must be"):
        within_group_fidelity(real, real, start[:2], dims=(0,))
    with pytest.raises(ValueError, match="G ≥ 2"):
        within_group_fidelity(real[:, :1], real[:, :1], start, dims=(0,))


def test_fidelity_table_keys_per_quantity_and_chunk():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(3, 4, 2, 39))
    table = fidelity_table(real, real, real[:, 0, 0])
    assert sorted(table) == ["hand/chunk1", "hand/chunk2", "object/chunk1", "object/chunk2"]
    assert all(v["within_r2"] == pytest.approx(1.0) for v in table.values())


def test_open_loop_feeds_predictions_back():
    calls = []

    def step(x, a, tasks):
        calls.append(x.clone())
        return x + a.sum(dim=(1, 2))[:, None]  # every action element adds to every coordinate

    start = np.zeros((2, 3), np.float32)
    actions = np.ones((2, 3, 4, 1), np.float32)  # [N, h, H, A]
    out = open_loop_full_states(step, start, actions, ["t", "t"])
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[:, :, 0], [[4, 8, 12], [4, 8, 12]])
    assert torch.equal(calls[2], torch.full((2, 3), 8.0))  # chunk 3 starts from chunk 2's prediction
    with pytest.raises(ValueError, match="task names"):
        open_loop_full_states(step, start, actions, ["t"])
