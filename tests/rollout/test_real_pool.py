"""Persistent real-simulator workers: reused across calls, replaced when they die, one pool for many settings."""

from __future__ import annotations

import numpy as np
import pytest
from test_real import make_point_env, steer

from rollout.real import EnvWorkerPool, make_real_evaluator, rollout_policy

POOL = dict(env_fn=make_point_env, start_method="fork")


def test_pool_reuses_its_workers_and_matches_fresh_ones():
    fresh = rollout_policy(steer, ["a", "b"], 3, seeds=5, num_workers=2, env_fn=make_point_env, max_episode_steps=40,
                           start_method="fork")  # fmt: skip
    with EnvWorkerPool(2, **POOL) as pool:
        first = rollout_policy(steer, ["a", "b"], 3, seeds=5, max_episode_steps=40, env_fn=make_point_env, pool=pool)
        workers = list(pool._workers)
        second = rollout_policy(steer, ["a", "b"], 3, seeds=5, max_episode_steps=40, env_fn=make_point_env, pool=pool)
        assert pool._workers == workers and pool.started == 2  # the second call started no process
        assert all(w.proc.is_alive() for w in workers)  # workers outlive a call
        for res in (first, second):
            assert [(o.task, o.seed, o.length, o.success) for o in res.outcomes] == [
                (o.task, o.seed, o.length, o.success) for o in fresh.outcomes
            ]
    assert pool.closed and len(workers) == 2 and all(not w.proc.is_alive() for w in workers)


def test_episode_settings_travel_with_each_call():
    with EnvWorkerPool(1, **POOL) as pool:
        short = rollout_policy(steer, ["a"], 2, seeds=0, max_episode_steps=2, env_fn=make_point_env, pool=pool)
        full = rollout_policy(steer, ["a"], 2, seeds=0, max_episode_steps=40, env_fn=make_point_env, pool=pool)
        keep_going = rollout_policy(
            steer, ["a"], 2, seeds=0, max_episode_steps=40, stop_on_success=False, env_fn=make_point_env, pool=pool
        )
    assert all(o.length == 2 and not o.success for o in short.outcomes)  # cut at 2 steps
    assert all(o.success and o.length < 40 for o in full.outcomes)  # stops at its first success
    assert all(o.length == 40 for o in keep_going.outcomes)  # runs to the limit


def test_a_dead_worker_is_replaced_on_the_next_call(tmp_path):
    crash = {"crash_file": str(tmp_path / "crashed"), "crash_step": 3, "mode": "exit"}
    with EnvWorkerPool(2, env_fn=make_point_env, env_kwargs=crash, start_method="fork") as pool:
        res = rollout_policy(steer, ["a"], 4, seeds=0, max_episode_steps=40, env_fn=make_point_env, env_kwargs=crash,
                             pool=pool)  # fmt: skip
        assert len(res.worker_failures) == 1 and not res.lost and res.success.all()
        again = rollout_policy(steer, ["a"], 4, seeds=0, max_episode_steps=40, env_fn=make_point_env,
                               env_kwargs=crash, pool=pool)  # fmt: skip
        assert pool.started == 3 and not again.worker_failures and again.success.all()


def test_pool_built_for_other_envs_is_refused():
    with EnvWorkerPool(1, **POOL) as pool:
        with pytest.raises(ValueError, match="worker pool was built for other env settings"):
            rollout_policy(steer, ["a"], 1, env_fn=make_point_env, env_kwargs={"mode": "raise"}, pool=pool)
    with pytest.raises(RuntimeError, match="closed"):
        pool.take(1)
    with pytest.raises(ValueError, match="num_workers must be ≥ 1"):
        EnvWorkerPool(0)


def test_evaluator_with_a_pool_starts_workers_once():
    with EnvWorkerPool(2, **POOL) as pool:
        evaluator = make_real_evaluator(["a"], 2, env_fn=make_point_env, max_episode_steps=40, pool=pool)
        m0, m1 = evaluator(steer, 0), evaluator(steer, 1)
        assert m0["eval/real_success"] == m1["eval/real_success"] == 1.0 and pool.started == 2


class CountingPolicy:
    """`steer` that records the batch size of every call."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, obs):
        self.batches.append(len(obs))
        return steer(obs)


def _outcomes(res):
    return [(o.task, o.episode, o.seed, o.length, o.success) for o in res.outcomes]


def test_multi_slot_workers_match_single_slot_ones_in_fewer_policy_calls():
    one, three = CountingPolicy(), CountingPolicy()
    common = dict(seeds=2, max_episode_steps=40, env_fn=make_point_env, start_method="fork")
    single = rollout_policy(one, ["a", "b"], 3, num_workers=1, slots_per_worker=1, **common)
    multi = rollout_policy(three, ["a", "b"], 3, num_workers=1, slots_per_worker=3, **common)
    with EnvWorkerPool(1, slots_per_worker=3, **POOL) as pool:
        pooled = rollout_policy(CountingPolicy(), ["a", "b"], 3, seeds=2, max_episode_steps=40, env_fn=make_point_env,
                                pool=pool)  # fmt: skip
        assert pool.started == 1
    assert _outcomes(multi) == _outcomes(single) == _outcomes(pooled)
    assert multi.success.all() and not multi.lost and not multi.worker_failures
    assert set(one.batches) == {1} and max(three.batches) == 3  # one worker, three episodes per policy call
    assert len(three.batches) < len(one.batches)
    assert sum(three.batches) == sum(one.batches) == sum(-(-o.length // 4) for o in single.outcomes)  # one per chunk
    assert multi.episodes_started == single.episodes_started == 6


def test_a_pool_worker_that_dies_mid_call_is_replaced_and_its_episodes_rerun(tmp_path):
    crash = {"crash_file": str(tmp_path / "crashed"), "crash_step": 3, "mode": "exit"}
    fresh = rollout_policy(steer, ["a"], 4, seeds=0, max_episode_steps=40, env_fn=make_point_env, num_workers=0)
    with EnvWorkerPool(1, env_fn=make_point_env, env_kwargs=crash, start_method="fork", slots_per_worker=2) as pool:
        res = rollout_policy(steer, ["a"], 4, seeds=0, max_episode_steps=40, env_fn=make_point_env, env_kwargs=crash,
                             pool=pool, max_retries=1)  # fmt: skip
        assert pool.started == 2  # the only worker died: a fresh one finished the call
        assert len(pool._workers) == 1 and pool._workers[0].proc.is_alive()
    assert len(res.worker_failures) == 1 and "exit code 3" in res.worker_failures[0]
    assert not res.lost and len(res.outcomes) == 4 and res.success.all()
    # the two episodes running on the dead worker's two slots ran again, from their seeds
    assert sorted(o.attempts for o in res.outcomes) == [1, 1, 2, 2]
    assert [(o.seed, o.length) for o in res.outcomes] == [(o.seed, o.length) for o in fresh.outcomes]
    assert res.episodes_started == 6


def test_a_hung_pool_worker_is_replaced_within_the_call(tmp_path):
    hang = {"crash_file": str(tmp_path / "hung"), "crash_step": 2, "mode": "hang"}
    with EnvWorkerPool(1, env_fn=make_point_env, env_kwargs=hang, start_method="fork") as pool:
        first = pool.take(1)[0]
        res = rollout_policy(steer, ["a"], 2, seeds=0, max_episode_steps=40, env_fn=make_point_env, env_kwargs=hang,
                             pool=pool, worker_timeout_s=2.0, timeout_s=60)  # fmt: skip
        assert pool.started == 2 and not first.proc.is_alive()  # the hung process was killed, not left behind
    assert not res.timed_out and not res.lost and len(res.outcomes) == 2 and res.success.all()
    assert len(res.worker_failures) == 1 and "no reply within worker_timeout_s" in res.worker_failures[0]
    assert sorted(o.attempts for o in res.outcomes) == [1, 2]


def test_jobs_run_in_their_order_and_repeats_are_identical():
    jobs = [("b", 7), ("a", 3), ("b", 7), ("a", 11), ("a", 3)]
    common = dict(max_episode_steps=40, env_fn=make_point_env, start_method="fork")
    res = rollout_policy(steer, ["ignored"], 9, jobs=jobs, num_workers=2, slots_per_worker=2, **common)
    assert [(o.task, o.seed) for o in res.outcomes] == jobs and [o.episode for o in res.outcomes] == list(range(5))
    assert res.tasks == ["b", "a"] and len(res.episodes) == 5
    for i, j in ((0, 2), (1, 4)):  # the same (task, seed) twice: the same deterministic episode
        assert res.outcomes[i].length == res.outcomes[j].length
        for key in ("state", "action", "image"):
            np.testing.assert_array_equal(res.episodes[i][key], res.episodes[j][key])
    assert not np.array_equal(res.episodes[1]["state"][0], res.episodes[3]["state"][0])  # other seed, other start
    # each job is the episode that seed gives on its own
    alone = rollout_policy(steer, ["a"], 1, seeds=[11], num_workers=0, **common)
    np.testing.assert_array_equal(alone.episodes[0]["state"], res.episodes[3]["state"])
    with pytest.raises(ValueError, match="jobs is empty"):
        rollout_policy(steer, ["a"], 1, jobs=[], num_workers=0, **common)
