"""Persistent real-simulator workers: reused across calls, replaced when they die, one pool for many settings."""

from __future__ import annotations

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
