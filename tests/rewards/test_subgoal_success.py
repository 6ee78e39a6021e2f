"""Success classifier: labels, hard negatives, metrics, calibration, save/load, unknown task, reward modes, and the
progress head with its `subgoal_progress` reward."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from reward_fixtures import make_episode_dataset, make_trajectories

from rewards import RewardLoadError, build_reward_scorer, resolve_reward_func
from rewards.subgoal_success import SubgoalProgressReward, SubgoalSuccessReward
from rewards.success_classifier import (
    FrameSet,
    SuccessClassifier,
    SuccessClassifierConfig,
    augment_images,
    auroc,
    calibrate_classifier,
    choose_threshold,
    evaluate_classifier,
    expected_calibration_error,
    fit_platt,
    frame_labels,
    frame_progress,
    frames_from_dataset,
    frames_from_datasets,
    load_success_classifier,
    predicted_frames,
    progress_metrics,
    reliability_table,
    split_by_episode,
    train_success_classifier,
)
from wlarl.types import WorldPrediction


def tiny_model(tasks=("push-v3",)) -> SuccessClassifier:
    torch.manual_seed(0)
    return SuccessClassifier(
        SuccessClassifierConfig(task_names=list(tasks), image_size=32, channels=[8, 16, 32], hidden_size=32)
    )


def test_frame_labels_shift_success_by_one_step_per_episode():
    success = np.array([False, True, True, False, False, True])
    episode = np.array([0, 0, 0, 1, 1, 1])
    step = np.array([0, 1, 2, 0, 1, 2])
    assert frame_labels(success, episode, step).tolist() == [False, False, True, False, False, False]
    perm = np.array([5, 3, 1, 0, 4, 2])  # order does not matter
    assert frame_labels(success[perm], episode[perm], step[perm]).tolist() == [False, False, False, False, False, True]


def test_frames_and_hard_negatives_from_dataset():
    frames = frames_from_dataset(make_episode_dataset(n_episodes=4, steps=12))
    s = frames.summary()
    assert s["episodes"] == 4 and s["positives"] > 0 and s["hard_negatives"] > 0
    # hard negatives come from failed episodes only and are never positives
    assert not (frames.hard_negative & frames.labels).any()
    assert set(frames.episode[frames.hard_negative]) <= {1, 3}


def test_frames_from_datasets_find_hard_negatives_against_every_datasets_successes():
    """A near-miss collection has no successes of its own: its hard negatives come from the demos' success poses."""
    demos = make_episode_dataset(n_episodes=4, steps=12)
    misses = make_episode_dataset(n_episodes=6, steps=12, seed=1).filter(lambda r: not r["episode_success"])
    alone = frames_from_dataset(misses)
    assert alone.summary()["positives"] == 0 and not alone.hard_negative.any()
    first, extra = frames_from_datasets([demos, misses])
    same = frames_from_dataset(demos)
    np.testing.assert_array_equal(first.hard_negative, same.hard_negative)  # the first dataset is labelled as alone
    np.testing.assert_array_equal(first.episode, same.episode)
    assert extra.hard_negative.any() and not extra.labels.any()
    assert extra.episode.min() > first.episode.max()  # ids stay unique across datasets


def test_split_by_episode_keeps_episodes_whole_and_stratifies():
    frames = frames_from_dataset(make_episode_dataset(n_episodes=20, steps=4))
    rest, val, test = split_by_episode(frames, [0.2, 0.2])
    sets = [set(p.episode) for p in (rest, val, test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(p) for p in (rest, val, test)) == len(frames)
    assert val.labels.any() and (~val.labels).any()


def test_metrics_known_answers():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    table = reliability_table([0.05, 0.05, 0.95, 0.95], [0, 1, 1, 1], bins=10)
    assert table[0]["count"] == 2 and table[0]["frac_positive"] == 0.5 and table[9]["frac_positive"] == 1.0
    assert expected_calibration_error([0.05, 0.05, 0.95, 0.95], [0, 1, 1, 1]) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert choose_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], "f1") == pytest.approx(0.35)
    assert choose_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], "youden") in (0.35, 0.8)


def test_platt_recovers_a_known_scaling():
    rng = np.random.default_rng(0)
    z = rng.normal(size=4000) * 3
    y = rng.random(4000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.08) and b == pytest.approx(-1.0, abs=0.15)


def test_augment_keeps_range_and_shape():
    x = torch.rand(5, 3, 32, 32)
    y = augment_images(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    assert torch.equal(augment_images(x, strength=0.0), x)


def test_unknown_task_and_save_load_round_trip(tmp_path):
    model = tiny_model(("push-v3", "reach-v3"))
    model.config.threshold, model.config.platt_scale = 0.7, 2.0
    with pytest.raises(KeyError, match=r"unknown task 'door-open-v3'.*\['push-v3', 'reach-v3'\]"):
        model.predict_proba(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["door-open-v3"])
    model.save_pretrained(tmp_path / "final")
    loaded = load_success_classifier(tmp_path)  # an output_dir with final/ works
    assert loaded.config.threshold == 0.7 and loaded.config.task_names == ["push-v3", "reach-v3"]
    imgs = torch.randint(0, 255, (3, 48, 48, 3), dtype=torch.uint8)  # another size is resized
    assert torch.allclose(loaded.predict_proba(imgs, ["reach-v3"] * 3), model.predict_proba(imgs, ["reach-v3"] * 3))
    with pytest.raises(FileNotFoundError, match="train one with"):
        load_success_classifier(tmp_path / "nothing")


def test_truncated_or_corrupt_checkpoint_names_the_file(tmp_path):
    tiny_model().save_pretrained(tmp_path / "final")
    weights, config = tmp_path / "final" / "model.safetensors", tmp_path / "final" / "config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()
    weights.write_bytes(good_weights[: len(good_weights) // 2])  # cut in half
    with pytest.raises(ValueError, match=re.escape(f"cannot load the weights in {weights}")):
        load_success_classifier(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{weights} is missing")):
        load_success_classifier(tmp_path)
    weights.write_bytes(good_weights)
    config.write_text(good_config[: len(good_config) // 2])
    with pytest.raises(ValueError, match=re.escape(f"cannot read {config}")):
        load_success_classifier(tmp_path)
    config.write_text(good_config.replace('"hidden_size": 32', '"hidden_size": 64'))  # weights of another config
    with pytest.raises(ValueError, match=re.escape(str(weights))):
        load_success_classifier(tmp_path)
    config.unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_success_classifier(tmp_path)


def test_training_separates_success_from_hard_negatives():
    frames = frames_from_dataset(make_episode_dataset(n_episodes=16, steps=10, seed=1))
    train, val = split_by_episode(frames, [0.25])
    model = tiny_model()
    before = auroc(model.predict_proba(torch.from_numpy(val.images), val.task_names).numpy(), val.labels)
    train_success_classifier(model, train, None, max_steps=80, batch_size=32, learning_rate=3e-3, eval_steps=80)
    calib = calibrate_classifier(model, val)
    probs = model.predict_proba(torch.from_numpy(val.images), val.task_names).numpy()
    assert auroc(probs, val.labels) > max(0.9, before)
    assert 0 < calib["calibration/threshold"] < 1
    # the arm-in-success-pose frames are not mistaken for success
    assert (probs[val.hard_negative] < model.config.threshold).mean() > 0.8


class _CopyWorld:
    """A stand-in World Expert: predicts the next frame as a blurred copy of the current one."""

    def imagine(self, obs, actions, decode=True):
        img = obs.images.float()
        blurred = ((img + img.roll(1, dims=1) + img.roll(1, dims=2)) / 3).to(torch.uint8)
        n = len(obs)
        return WorldPrediction(
            latents=torch.zeros(n, 2, 2, 2), states=obs.states, success_logits=torch.zeros(n), images=blurred
        )


def test_predicted_frames_are_labelled_with_the_real_outcome():
    ds = make_episode_dataset(n_episodes=4, steps=8)
    pred = predicted_frames(_CopyWorld(), ds, horizon=2, episodes=[0, 1], max_windows=None)
    real = frames_from_dataset(ds)
    assert set(pred.episode) == {0, 1}
    assert len(pred) == 2 * 8  # windows t = 0..7 of each 9-row episode
    # label of the window at t = real label at t+2: episode 0 succeeds, so its last windows are positive
    ep0 = real.labels[real.episode == 0]
    assert pred.labels[pred.episode == 0].tolist() == [ep0[min(t + 2, 8)] for t in range(8)]


def test_reward_modes_and_by_name(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "final")
    fn = resolve_reward_func("subgoal_success", reward_model_path=str(tmp_path))
    assert isinstance(fn, SubgoalSuccessReward)
    traj = make_trajectories(n=2, t=3, group_size=2, image_size=32, task_names=["push-v3"] * 2)
    traj.subgoal_images[1] = torch.randint(0, 255, (3, 32, 32, 3), dtype=torch.uint8)
    probs = fn.chunk_probs(traj.subgoal_images, traj.task_names)  # [N, T]
    assert probs.shape == (2, 3)
    out = build_reward_scorer(["subgoal_success"], reward_model_path=str(tmp_path))(traj)
    assert torch.allclose(out.per_function[:, 0], probs[:, -1])
    fn_max = SubgoalSuccessReward(model, mode="max")
    alive = torch.tensor([[True, True, False], [True, True, True]])
    assert fn_max(subgoal_images=traj.subgoal_images, task_names=traj.task_names, alive=alive) == pytest.approx(
        [probs[0, :2].max().item(), probs[1].max().item()]
    )
    fn_ok = SubgoalSuccessReward(model, mode="success")
    model.config.threshold = 0.0
    assert fn_ok(subgoal_images=traj.subgoal_images, task_names=traj.task_names) == [1.0, 1.0]
    assert fn_ok.trajectory_success(traj.subgoal_images, traj.task_names).tolist() == [True, True]
    with pytest.raises(RewardLoadError, match=r"needs option\(s\) \['reward_model_path'\]"):
        resolve_reward_func("subgoal_success")


def test_early_negatives_are_early_frames_of_successful_episodes():
    frames = frames_from_dataset(make_episode_dataset(n_episodes=2, steps=12), early_fraction=0.5)
    # episode 0 succeeds at its first positive frame (step 9): early = steps 0..4; episode 1 failed: none
    first = int(np.flatnonzero(frames.labels & (frames.episode == 0)).min())
    early = np.flatnonzero(frames.early_negative)
    assert early.tolist() == [i for i in range(first) if i < 0.5 * first]
    assert not frames.early_negative[frames.episode == 1].any()


def test_boundary_frames_are_the_ones_right_before_success():
    frames = frames_from_dataset(make_episode_dataset(n_episodes=2, steps=12), boundary_margin=2)
    first = int(np.flatnonzero(frames.labels & (frames.episode == 0)).min())
    assert np.flatnonzero(frames.boundary).tolist() == [first - 2, first - 1]


def test_predicted_frames_keep_hard_negatives_when_subsampling():
    ds = make_episode_dataset(n_episodes=6, steps=10)
    real = frames_from_dataset(ds)
    n_hard = int(real.hard_negative.sum())
    kept = predicted_frames(_CopyWorld(), ds, horizon=1, max_windows=24, keep_hard_negatives=True)
    assert len(kept) == 24 and kept.hard_negative.sum() == min(n_hard, 6) and 0 < kept.labels.sum() <= 12
    plain = predicted_frames(_CopyWorld(), ds, horizon=1, max_windows=24)
    assert len(plain) == 24


def test_scorer_finds_its_success_classifier(tmp_path):
    model = tiny_model()
    model.config.threshold = 0.3
    model.save_pretrained(tmp_path / "final")
    scorer = build_reward_scorer(["shaping", "subgoal_success"], reward_model_path=str(tmp_path))
    predict_proba, threshold = scorer.find_success_classifier()
    assert threshold == pytest.approx(0.3)
    images = torch.randint(0, 255, (3, 32, 32, 3), dtype=torch.uint8)
    probs = predict_proba(images, ["push-v3"] * 3)  # calibrated, [N]
    assert probs.shape == (3,) and torch.allclose(probs, scorer.funcs[1].model.predict_proba(images, ["push-v3"] * 3))
    assert build_reward_scorer(["shaping", "predicted_success"]).find_success_classifier() is None


def tiny_progress_model(tasks=("push-v3",)) -> SuccessClassifier:
    torch.manual_seed(0)
    return SuccessClassifier(
        SuccessClassifierConfig(
            task_names=list(tasks), image_size=32, channels=[8, 16, 32], hidden_size=32, progress_head=True
        )
    )


def test_frame_progress_is_the_reward_of_the_step_that_led_to_the_frame():
    # two episodes, rows shuffled; episode 7 has a gap at step 3 (no step 2 row), so frame 3 has no known step
    episode = np.array([7, 5, 5, 7, 5, 7])
    step = np.array([1, 2, 0, 0, 1, 3])
    reward = np.array([4.0, 12.0, 2.0, 6.0, -1.0, 9.0], np.float32)
    out = frame_progress(reward, episode, step)
    # episode 5: frame 0 none, frame 1 ← reward of step 0 (2.0), frame 2 ← step 1 (−1.0, clipped to 0)
    # episode 7: frame 0 none, frame 1 ← step 0 (6.0), frame 3 ← nothing (step 2 missing)
    expected = [0.6, 0.0, np.nan, np.nan, 0.2, np.nan]
    np.testing.assert_allclose(out, expected, equal_nan=True)
    with pytest.raises(ValueError, match="scale must be > 0"):
        frame_progress(reward, episode, step, scale=0.0)


def test_frames_carry_progress_from_the_reward_column():
    ds = make_episode_dataset(n_episodes=2, steps=8, shaped_reward=True)
    frames = frames_from_dataset(ds)
    first = frames.episode != np.roll(frames.episode, 1)
    assert np.isnan(frames.progress[first]).all() and np.isfinite(frames.progress[~first]).all()
    solved = frames.labels
    assert frames.progress[solved].min() > 0.95  # the object is on the goal
    assert frames.progress[(frames.episode == 1) & ~first].max() <= 0.3 + 1e-6  # the failed one never moved it
    assert frames.summary()["with_progress"] == int((~first).sum())
    assert np.isnan(frames.subset(np.array([0])).progress).all()  # subset and cat keep the column
    assert len(FrameSet.cat([frames, frames]).progress) == 2 * len(frames)


def test_progress_head_round_trips_and_a_model_without_one_says_so(tmp_path):
    images = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    model = tiny_progress_model()
    probs, progress = model.predict_proba_and_progress(images, ["push-v3"] * 4)
    assert probs.shape == progress.shape == (4,) and ((progress > 0) & (progress < 1)).all()
    assert torch.allclose(probs, model.predict_proba(images, ["push-v3"] * 4))
    model.save_pretrained(tmp_path / "final")
    loaded = load_success_classifier(tmp_path)
    assert loaded.config.progress_head and torch.allclose(loaded.predict_progress(images, ["push-v3"] * 4), progress)
    plain = tiny_model()
    with pytest.raises(ValueError, match="no progress head.*--progress_head true"):
        plain.predict_progress(images, ["push-v3"] * 4)
    with pytest.raises(ValueError, match="subgoal_progress: this success classifier has no progress head"):
        SubgoalProgressReward(plain)


def test_training_the_progress_head_orders_unsolved_frames_by_how_close_they_came():
    frames = frames_from_dataset(make_episode_dataset(n_episodes=16, steps=10, seed=1, shaped_reward=True))
    train, val = split_by_episode(frames, [0.25])
    model = tiny_progress_model()
    before = progress_metrics(model, val, "val/")
    metrics = train_success_classifier(
        model, train, val, max_steps=120, batch_size=32, learning_rate=3e-3, eval_steps=120
    )
    after = progress_metrics(model, val, "val/")
    assert after["val/progress_spearman"] > max(0.8, before["val/progress_spearman"])
    assert after["val/progress_spearman_unsolved"] > 0.6
    assert after["val/progress_mae"] < before["val/progress_mae"]
    assert "val/progress_spearman" in metrics  # logged during training
    calibrate_classifier(model, val)
    assert "val/progress_spearman" in evaluate_classifier(model, val, "val/")
    no_targets = FrameSet(**{**train.__dict__, "progress": np.full(len(train), np.nan, np.float32)})
    with pytest.raises(ValueError, match="no training frame has a progress target.*`reward` column"):
        train_success_classifier(tiny_progress_model(), no_targets, max_steps=1)


def test_subgoal_progress_scores_success_as_one_and_failures_by_progress(tmp_path):
    model = tiny_progress_model()
    torch.manual_seed(1)
    images = torch.randint(0, 255, (3, 3, 32, 32, 3), dtype=torch.uint8)  # [N, T, H, W, 3]
    flat = images.reshape(9, 32, 32, 3)
    probs, progress = model.predict_proba_and_progress(flat, ["push-v3"] * 9)
    model.config.threshold = float(probs.median())  # some frames solved, some not
    value = torch.where(probs >= model.config.threshold, torch.ones(9), 0.5 * progress).reshape(3, 3)
    alive = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    final = SubgoalProgressReward(model, mode="final", failure_scale=0.5)
    got = final(subgoal_images=images, task_names=["push-v3"] * 3, alive=alive)
    assert got == pytest.approx([value[0, 1].item(), value[1, 2].item(), value[2, 0].item()])
    best = SubgoalProgressReward(model, mode="max", failure_scale=0.5)
    got = best(subgoal_images=images, task_names=["push-v3"] * 3, alive=alive)
    assert got == pytest.approx([value[0, :2].max().item(), value[1].max().item(), value[2, 0].item()])
    assert max(got) <= 1.0 and all(v == 1.0 or v <= 0.5 for v in got)
    with pytest.raises(ValueError, match="failure_scale must be in"):
        SubgoalProgressReward(model, failure_scale=1.0)
    with pytest.raises(ValueError, match="mode must be 'final' or 'max'"):
        SubgoalProgressReward(model, mode="success")
    # by name, with the classifier found for the `both` success signal
    model.save_pretrained(tmp_path / "final")
    scorer = build_reward_scorer(["subgoal_progress"], reward_model_path=str(tmp_path))
    assert isinstance(scorer.funcs[0], SubgoalProgressReward)
    assert scorer.find_success_classifier()[1] == pytest.approx(model.config.threshold)
