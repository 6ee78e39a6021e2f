"""goal_similarity on known latents, with an encoder instead of latents, and goal latents from a dataset."""

from __future__ import annotations

import pytest
import torch
from reward_fixtures import make_episode_dataset, make_trajectories

from rewards import build_reward_scorer
from rewards.goal_similarity import GoalSimilarityReward, build_goal_similarity_reward, goal_latents_from_dataset


def _onehot(i: int) -> torch.Tensor:
    z = torch.zeros(8)
    z[i] = 1.0
    return z.reshape(2, 2, 2)


def test_cosine_known_answer_with_center():
    goals = {"push-v3": torch.stack([_onehot(0), _onehot(1)])}  # [K=2, 2, 2, 2]
    fn = GoalSimilarityReward(goals)
    latents = torch.zeros(3, 2, 2, 2, 2)
    latents[0, -1] = _onehot(1)  # on a goal
    latents[1, -1] = _onehot(0) + _onehot(2)  # halfway: cos = 1/sqrt(2)
    latents[2, -1] = _onehot(3)  # orthogonal
    latents[2, 0] = _onehot(0)  # but the earlier chunk is the last alive one
    alive = torch.tensor([[True, True], [True, True], [True, False]])
    out = fn(subgoal_latents=latents, alive=alive, task_names=["push-v3"] * 3)
    assert out == pytest.approx([1.0, 2**-0.5, 1.0])
    centered = GoalSimilarityReward(goals, {"push-v3": _onehot(0)})
    # relative to the centre e0, goal e0 has no direction; goal e1 - e0 vs z = e1 - e0 → 1
    assert centered(subgoal_latents=latents[:1], task_names=["push-v3"])[0] == pytest.approx(1.0)


def test_l2_metric_and_unknown_task():
    fn = GoalSimilarityReward({"a": _onehot(0)[None]}, metric="l2")
    lat = torch.stack([_onehot(0), _onehot(1)])[:, None]  # [N=2, T=1, 2, 2, 2]
    assert fn(subgoal_latents=lat, task_names=["a", "a"]) == pytest.approx([0.0, -(2**0.5) / 8**0.5])
    with pytest.raises(KeyError, match="no goal latents for task 'b'"):
        fn(subgoal_latents=lat, task_names=["a", "b"])


def test_encoder_used_when_latents_missing():
    encoder = lambda imgs: imgs.float().mean(dim=(1, 2)).reshape(-1, 3, 1, 1)  # noqa: E731 - [N,H,W,3] → [N,3,1,1]
    goal = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    fn = GoalSimilarityReward({"a": goal}, encoder=encoder)
    images = torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8)
    images[0, 0, ..., 2] = 200  # blue → on the goal
    images[1, 0, ..., 0] = 200  # red → orthogonal
    assert fn(subgoal_images=images, task_names=["a", "a"]) == pytest.approx([1.0, 0.0])


class _MeanColourPolicy:
    def encode_images(self, images):  # uint8 [N, H, W, 3] → [N, 3, 2, 2] quadrant colours
        x = images.float().permute(0, 3, 1, 2) / 255
        return torch.nn.functional.adaptive_avg_pool2d(x, 2)


def test_goals_from_dataset_rank_success_above_failure():
    ds = make_episode_dataset(n_episodes=8, steps=10)
    policy = _MeanColourPolicy()
    goals, centers = goal_latents_from_dataset(ds, policy.encode_images)
    assert goals["push-v3"].shape == (4, 3, 2, 2) and centers["push-v3"].shape == (3, 2, 2)
    fn = build_goal_similarity_reward(policy=policy, dataset_path=None, goal_latents=goals, goal_centers=centers)
    images = torch.from_numpy(ds.with_format("numpy")["image"][:])
    ok_final, fail_final = images[10], images[21]  # episode 0 (success) and 1 (failure) final frames
    lat = policy.encode_images(torch.stack([ok_final, fail_final]))[:, None]
    out = fn(subgoal_latents=lat, task_names=["push-v3"] * 2)
    assert out[0] > 0.9 and out[0] > out[1] + 0.3
    with pytest.raises(ValueError, match="dataset_path"):
        build_goal_similarity_reward()


def test_by_name_through_scorer(tmp_path):
    ds = make_episode_dataset(n_episodes=4, steps=8)
    ds.save_to_disk(str(tmp_path / "demos"))
    scorer = build_reward_scorer(["goal_similarity"], dataset_path=str(tmp_path / "demos"), policy=_MeanColourPolicy())
    traj = make_trajectories(n=2, t=2, group_size=2, latents=torch.rand(2, 2, 3, 2, 2), task_names=["push-v3"] * 2)
    out = scorer(traj)
    assert out.names == ["goal_similarity"] and torch.isfinite(out.per_function).all()
