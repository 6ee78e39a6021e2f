"""Real-simulator rollouts: seeds, chunks, episodes schema, success statistics, crashing and hanging workers."""

import os
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from rollout.real import episode_seeds, make_real_evaluator, rollout_policy


def _claim(path):
    """True for exactly one caller across processes (atomic create), so that only one worker fails."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


class PointEnv(gym.Env):
    """A point on a plane that must reach the origin; image = one bright pixel on a 16×16 canvas.

    Seeded starts lie at radius 0.5–1; success when |p| < 0.1. A policy that steers to the origin succeeds, the
    zero policy never does.
    """

    metadata = {"render_modes": []}

    def __init__(self, task="point-v0", crash_file=None, crash_step=-1, mode="exit"):
        self.task = task
        self.crash_file, self.crash_step, self.mode = crash_file, crash_step, mode
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "state": gym.spaces.Box(-2, 2, (2,), np.float32),
                "instruction": gym.spaces.Text(64),
            }
        )
        self.action_space = gym.spaces.Box(-0.2, 0.2, (2,), np.float32)
        self.pos = np.zeros(2, np.float32)
        self.t = 0

    def _obs(self):
        img = np.zeros((16, 16, 3), np.uint8)
        ij = np.clip(((self.pos + 1) * 7.5).round().astype(int), 0, 15)
        img[ij[1], ij[0]] = 255
        return {"image": img, "state": self.pos.copy(), "instruction": f"reach the origin ({self.task})"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        angle, radius = self.np_random.uniform(0, 2 * np.pi), self.np_random.uniform(0.5, 1.0)
        self.pos = np.array([np.cos(angle), np.sin(angle)], np.float32) * radius
        self.t = 0
        return self._obs(), {"full_state": np.concatenate([self.pos, [0.0]]).astype(np.float32)}

    def step(self, action):
        self.t += 1
        if self.t == self.crash_step and self.crash_file and _claim(self.crash_file):
            if self.mode == "exit":
                os._exit(3)
            if self.mode == "raise":
                raise RuntimeError("simulated simulator failure")
            if self.mode == "hang":
                time.sleep(3600)
        self.pos = np.clip(self.pos + np.asarray(action, np.float32), -2, 2).astype(np.float32)
        success = bool(np.linalg.norm(self.pos) < 0.1)
        info = {"success": success, "full_state": np.concatenate([self.pos, [0.0]]).astype(np.float32)}
        return self._obs(), -float(np.linalg.norm(self.pos)), False, False, info


def make_point_env(task, **kwargs):
    return PointEnv(task, **kwargs)


def steer(obs):
    """Scripted policy: 4-step chunks that reach the origin (clipped by the env to 0.2 per step). [N, 4, 2]."""
    return (-obs.states / 4)[:, None, :].repeat(1, 4, 1)


def zero(obs):
    return torch.zeros(len(obs), 4, 2)


COMMON = dict(env_fn=make_point_env, max_episode_steps=40, start_method="fork")


def test_seeds():
    assert episode_seeds(3, 10) == [10, 11, 12]
    assert episode_seeds(2, [7, 9]) == [7, 9]
    with pytest.raises(ValueError, match="expected 3 seeds"):
        episode_seeds(3, [1, 2])


def test_scripted_succeeds_zero_fails_in_process():
    good = rollout_policy(steer, ["a", "b"], 3, seeds=0, num_workers=0, record_video=1, **COMMON)
    bad = rollout_policy(zero, ["a", "b"], 3, seeds=0, num_workers=0, **COMMON)
    assert good.success.tolist() == [True] * 6 and bad.success.tolist() == [False] * 6
    s = good.summary()
    assert s["success"] == 1.0 and s["ci_high"] == pytest.approx(1.0) and s["ci_low"] < 1.0
    assert good.chunk_size == 4
    assert set(good.videos) == {"a_ep0", "b_ep0"}
    assert bad.episode_lengths.tolist() == [40] * 6  # runs to the step limit
    m = good.metrics()
    assert m["eval/real_success"] == 1.0 and m["eval/a/success"] == 1.0 and m["eval/timed_out"] == 0.0
    # Episodes in write_episodes' input format: T+1 observations, T actions.
    ep = good.episodes[0]
    n = good.outcomes[0].length
    assert ep["image"].shape == (n + 1, 16, 16, 3) and ep["action"].shape == (n, 2) and len(ep["subtask"]) == n + 1
    assert ep["noise_mode"] == "policy" and ep["episode_success"] and ep["success"][-1] and ep["seed"] == 0
    assert np.abs(ep["action"]).max() <= 0.2 + 1e-6  # clipped to the action space
    assert ep["full_state"].shape == (n + 1, 3) and ep["image"].dtype == np.uint8
    # Same seeds → identical first observations for both policies.
    assert np.array_equal(good.episodes[1]["state"][0], bad.episodes[1]["state"][0])


def test_progress_bar_counts_finished_episodes_and_their_success(capsys):
    res = rollout_policy(steer, ["a", "b"], 2, seeds=0, num_workers=0, keep_episodes=False, progress=True, **COMMON)
    bar = capsys.readouterr().err
    assert res.success.all()
    assert "real episodes" in bar and "4/4" in bar and "success=1.00" in bar
    rollout_policy(zero, ["a"], 1, seeds=0, num_workers=0, keep_episodes=False, **COMMON)
    assert "real episodes" not in capsys.readouterr().err  # off by default


def test_worker_processes_match_in_process():
    par = rollout_policy(steer, ["a"], 4, seeds=3, num_workers=2, **COMMON)
    seq = rollout_policy(steer, ["a"], 4, seeds=3, num_workers=0, **COMMON)
    assert [o.length for o in par.outcomes] == [o.length for o in seq.outcomes]
    assert {o.worker for o in par.outcomes} == {0, 1}
    assert not par.worker_failures and not par.lost


def test_spawn_default_start_method():
    res = rollout_policy(steer, ["a"], 2, seeds=0, num_workers=2, env_fn=make_point_env, max_episode_steps=40)
    assert res.success.tolist() == [True, True]


@pytest.mark.parametrize("mode", ["exit", "raise"])
def test_crashing_worker_episode_is_rerun(tmp_path, mode):
    kwargs = {"crash_file": str(tmp_path / "crashed"), "crash_step": 3, "mode": mode}
    res = rollout_policy(steer, ["a"], 4, seeds=0, num_workers=2, env_kwargs=kwargs, **COMMON)
    assert len(res.worker_failures) == 1
    assert ("exit code 3" if mode == "exit" else "simulated simulator failure") in res.worker_failures[0]
    assert not res.lost and len(res.outcomes) == 4 and res.success.all()
    assert sorted(o.attempts for o in res.outcomes) == [1, 1, 1, 2]
    if mode == "exit":  # the survivors finished everything
        assert len({o.worker for o in res.outcomes if o.attempts == 2}) == 1


def test_all_workers_dead_reports_lost(tmp_path):
    # Single worker that crashes: nothing survives, every episode is reported lost.
    kwargs = {"crash_file": str(tmp_path / "crashed"), "crash_step": 2, "mode": "exit"}
    res = rollout_policy(steer, ["a"], 3, seeds=0, num_workers=1, env_kwargs=kwargs, **COMMON)
    assert len(res.worker_failures) == 1 and len(res.outcomes) == 0
    assert len(res.lost) == 3 and all(d["reason"] for d in res.lost)
    assert np.isnan(res.summary()["success"])


def test_hanging_worker_times_out(tmp_path):
    kwargs = {"crash_file": str(tmp_path / "hung"), "crash_step": 2, "mode": "hang"}
    t0 = time.monotonic()
    res = rollout_policy(steer, ["a"], 2, seeds=0, num_workers=1, env_kwargs=kwargs, timeout_s=3.0, **COMMON)
    assert time.monotonic() - t0 < 15
    assert res.timed_out and len(res.lost) == 2
    assert res.metrics()["eval/timed_out"] == 1.0


def test_worker_timeout_kills_hung_worker_and_reruns(tmp_path):
    kwargs = {"crash_file": str(tmp_path / "hung"), "crash_step": 2, "mode": "hang"}
    res = rollout_policy(
        steer, ["a"], 3, seeds=0, num_workers=2, env_kwargs=kwargs, worker_timeout_s=2.0, timeout_s=60, **COMMON
    )
    assert not res.timed_out and len(res.outcomes) == 3 and not res.lost
    assert "no reply" in res.worker_failures[0]


def test_bad_policy_output_names_shape():
    with pytest.raises(ValueError, match=r"expected actions \[N=1, H, A\]"):
        rollout_policy(lambda obs: torch.zeros(2, 4, 2), ["a"], 1, num_workers=0, **COMMON)


def test_episodes_write_to_dataset(tmp_path):
    from wlarl.data import load_episodes, write_episodes

    res = rollout_policy(steer, ["a", "b"], 2, seeds=0, num_workers=0, **COMMON)
    write_episodes(res.episodes, tmp_path / "ds", {"simulator": "point"})
    ds = load_episodes(tmp_path / "ds")
    assert ds.num_episodes == 4
    assert len(ds.dataset) == sum(o.length + 1 for o in res.outcomes)
    row = ds.dataset[0]
    assert row["noise_mode"] == "policy" and row["task_name"] == "a" and row["step_index"] == 0


def test_make_real_evaluator():
    ev = make_real_evaluator(["a"], 2, seed=0, num_workers=0, num_videos=1, **COMMON)
    out = ev(steer, 5)
    assert out["eval/real_success"] == 1.0 and "a_ep0" in out["videos"]


class SteerWhenGreedy(torch.nn.Module):
    """A policy with `act`: the steering chunk when greedy, a zero chunk when sampling (records the temperatures)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.temperatures = []

    def act(self, obs, sample=True, temperature=1.0):
        if sample:
            self.temperatures.append(temperature)
        actions = zero(obs) if sample else steer(obs)
        return SimpleNamespace(actions=actions, subtask_text=["sampled" if sample else "greedy"] * len(obs))


def test_evaluator_reports_greedy_and_sampled_success():
    policy = SteerWhenGreedy()
    only_greedy = make_real_evaluator(["a", "b"], 2, seed=0, num_workers=0, **COMMON)(policy, 0)
    assert "eval/real_success_sampled" not in only_greedy and policy.temperatures == []
    ev = make_real_evaluator(["a", "b"], 2, seed=0, num_workers=0, sampled_temperature=0.7, **COMMON)
    out = ev(policy, 3)
    assert out["eval/real_success"] == 1.0 and out["eval/a/success"] == 1.0  # the greedy policy steers home
    assert out["eval/real_success_sampled"] == 0.0 and out["eval/b/success_sampled"] == 0.0  # the sampled one not
    assert out["eval/real_success_sampled_ci_low"] == 0.0 < out["eval/real_success_sampled_ci_high"] < 1.0
    assert {"eval/a/success_sampled_ci_low", "eval/a/success_sampled_ci_high"} <= set(out)
    assert set(policy.temperatures) == {0.7}


def test_sampling_needs_a_policy_that_samples():
    with pytest.raises(TypeError, match="sampled rollouts need a WLAPolicy"):
        rollout_policy(steer, ["a"], 1, num_workers=0, sample=True, **COMMON)


def test_videos_are_whole_when_other_episodes_render_only_chunk_boundaries():
    whole = rollout_policy(steer, ["a", "b"], 3, seeds=0, num_workers=0, record_video=1, **COMMON)
    lean = rollout_policy(steer, ["a", "b"], 3, seeds=0, num_workers=0, record_video=1, keep_episodes=False, **COMMON)
    assert set(lean.videos) == {"a_ep0", "b_ep0"} and not lean.episodes
    for name, frames in whole.videos.items():
        assert np.array_equal(lean.videos[name], frames)  # every step's frame, T + 1 of them
    assert [o.length for o in lean.outcomes] == [o.length for o in whole.outcomes]
    with pytest.raises(ValueError, match="frames='chunk'"):
        rollout_policy(steer, ["a"], 1, num_workers=0, frames="chunk", record_video=1, keep_episodes=False, **COMMON)
