"""collect_demos: the debug preset end to end as a subprocess, and clear config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import requires_metaworld

from rollout.collect import CollectConfig
from wlarl.cli import load_section, parse_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "collect_demos.py"


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(RECIPE), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.metaworld
@requires_metaworld
def test_debug_preset_end_to_end(tmp_path):
    from wlarl.data import SFTWindows, load_episodes, start_states

    out = tmp_path / "demos"
    proc = _run("--config", "debug", "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "success" in proc.stdout and "random_segments" in proc.stdout  # closing table
    ep_ds = load_episodes(out)
    cfg = load_section("debug", "collect_demos")
    assert ep_ds.num_episodes == len(cfg["tasks"]) * cfg["episodes_per_task"]
    assert ep_ds.meta["simulator"] == "metaworld" and ep_ds.meta["image_size"] == [64, 64]
    assert ep_ds.meta["collection_config"]["episodes_per_task"] == cfg["episodes_per_task"]
    assert json.loads((out / "config.json").read_text())["tasks"] == cfg["tasks"]
    summary = json.loads((out / "summary.json").read_text())
    assert {r["noise_mode"] for r in summary["rows"]} >= {"clean", "random_segments", "all"}
    assert {s["task_name"] for s in start_states(ep_ds)} == set(cfg["tasks"])
    item = SFTWindows(ep_ds, horizon=4)[0]
    assert item["image"].shape == (64, 64, 3) and item["actions"].shape == (4, 4)


def test_bad_task_and_bad_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown Meta-World task.*'pick-v3'.*valid task names"):
        CollectConfig(tasks=["pick-v3"])
    with pytest.raises(ValueError, match="noise_weights has 1 entries but noise_modes has 2"):
        CollectConfig(noise_modes=["clean", "gaussian"], noise_weights=[1.0])
    with pytest.raises(ValueError, match="noise_modes"):
        CollectConfig(noise_modes=["chaos"], noise_weights=[1.0])
    with pytest.raises(ValueError, match="episodes_per_task=0"):
        parse_config(CollectConfig, "collect_demos", ["--config", "debug", "--episodes_per_task", "0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect_demos: {tasks: [reach-v3], episodez_per_task: 3}\n")
    with pytest.raises(ValueError, match="unknown field.*episodez_per_task"):
        parse_config(CollectConfig, "collect_demos", ["--config", str(bad)])
    proc = _run("--config", "debug", "--output_dir", str(tmp_path / "x"), "--tasks", "pick-v3")
    assert proc.returncode != 0 and "unknown Meta-World task" in proc.stderr


def test_presets_are_valid():
    for preset in ("debug", "default", "many_goals"):
        cfg = parse_config(CollectConfig, "collect_demos", ["--config", preset])
        counts = cfg.mode_counts()
        assert sum(counts.values()) == cfg.episodes_per_task and set(counts) == set(cfg.noise_modes)
    default = parse_config(CollectConfig, "collect_demos", ["--config", "default"])
    assert default.mode_counts() == {"clean": 8, "gaussian": 4, "random_segments": 4, "perturbed_start": 4}


def test_task_episodes_set_per_task_counts_seeds_and_mode_splits():
    from rollout.collect import make_jobs

    cfg = parse_config(CollectConfig, "collect_demos", ["--config", "many_goals"])
    counts = cfg.episode_counts()
    assert counts["reach-v3"] == counts["push-v3"] == 200
    assert {counts[t] for t in cfg.tasks if t not in ("reach-v3", "push-v3")} == {cfg.episodes_per_task}
    jobs = make_jobs(cfg)
    assert len(jobs) == sum(counts.values())
    by_task = {t: [j for j in jobs if j["task"] == t] for t in cfg.tasks}
    assert [j["seed"] for j in by_task["reach-v3"]] == list(range(cfg.seed, cfg.seed + 200))
    assert [j["seed"] for j in by_task["drawer-open-v3"]] == list(range(cfg.seed, cfg.seed + cfg.episodes_per_task))
    modes = [j["noise"]["mode"] for j in by_task["push-v3"]]
    assert {m: modes.count(m) for m in set(modes)} == cfg.mode_counts(200) == {
        "clean": 80, "gaussian": 40, "random_segments": 40, "perturbed_start": 40}  # fmt: skip
    # without task_episodes every task gets episodes_per_task
    plain = CollectConfig(tasks=["reach-v3", "push-v3"], episodes_per_task=3)
    assert plain.episode_counts() == {"reach-v3": 3, "push-v3": 3}


@pytest.mark.parametrize(
    "entries, match",
    [
        (["reach-v3:5"], "expected TASK=N"),
        (["reach-v3=many"], "expected TASK=N"),
        (["door-open-v3=5"], "not among the collected tasks"),
        (["reach-v3=0"], "expected N >= 1"),
        (["reach-v3=5", "reach-v3=7"], "given twice"),
    ],
)
def test_bad_task_episodes_are_clear_errors(entries, match):
    with pytest.raises(ValueError, match=match):
        CollectConfig(tasks=["reach-v3", "push-v3"], task_episodes=entries)


@pytest.mark.metaworld
@requires_metaworld
def test_task_episodes_collect_the_counted_episodes_on_their_seeds(tmp_path):
    from wlarl.data import load_episodes, seeds_by_task

    out = tmp_path / "demos"
    proc = _run("--tasks", "reach-v3", "push-v3", "--episodes_per_task", "1", "--task_episodes", "push-v3=3",
                "--seed", "500", "--max_episode_steps", "6", "--num_workers", "0", "--output_dir", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seeds_by_task(load_episodes(out)) == {"reach-v3": {500}, "push-v3": {500, 501, 502}}


@pytest.mark.metaworld
@requires_metaworld
def test_parallel_workers_match_in_process_collection():
    import numpy as np

    from rollout.collect import iter_episodes, make_jobs

    cfg = CollectConfig(
        tasks=["reach-v3"],
        episodes_per_task=2,
        noise_modes=["gaussian"],
        noise_weights=[1.0],
        image_size=16,
        max_episode_steps=8,
        num_workers=0,
    )
    jobs = make_jobs(cfg)
    serial = list(iter_episodes(cfg, jobs))
    cfg.num_workers = 2
    parallel = list(iter_episodes(cfg, jobs))
    assert [e["seed"] for e in parallel] == [e["seed"] for e in serial] == [0, 1]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a["action"], b["action"])
        np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.metaworld
@requires_metaworld
def test_a_second_collection_in_one_process_uses_its_own_env_settings():
    """Envs are cached per process; a cache keyed by task alone handed the second collection the first one's env."""
    from rollout.collect import iter_episodes, make_jobs

    def lengths(steps):
        cfg = CollectConfig(
            tasks=["reach-v3"], episodes_per_task=1, noise_modes=["gaussian"], noise_weights=[1.0], image_size=16,
            max_episode_steps=steps, num_workers=0,
        )  # fmt: skip
        return [len(e["action"]) for e in iter_episodes(cfg, make_jobs(cfg))]

    assert lengths(6) == [6]
    assert lengths(11) == [11]


def test_near_miss_config_ranges_are_validated():
    cfg = CollectConfig(noise_modes=["clean", "near_miss"], noise_weights=[1, 1], stop_before_min=2, hold_steps=3)
    spec = cfg.noise_spec("near_miss")
    assert spec.stop_before == (2, 8) and spec.hold_steps == 3 and not spec.ensure_miss
    with pytest.raises(ValueError, match="stop_before"):
        CollectConfig(noise_modes=["near_miss"], noise_weights=[1.0], stop_before_min=0)
    with pytest.raises(ValueError, match="stop_before"):
        CollectConfig(noise_modes=["near_miss"], noise_weights=[1.0], stop_before_min=5, stop_before_max=3)
    with pytest.raises(ValueError, match="hold_steps"):
        parse_config(CollectConfig, "collect_demos", ["--config", "debug", "--hold_steps", "0"])


@pytest.mark.metaworld
@requires_metaworld
def test_mixed_collection_with_near_miss_writes_a_valid_dataset(tmp_path):
    from rewards.success_classifier import frames_from_dataset
    from rollout.collect import collect
    from wlarl.data import load_episodes

    cfg = CollectConfig(
        output_dir=str(tmp_path / "nm"), tasks=["reach-v3"], episodes_per_task=4, noise_modes=["clean", "near_miss"],
        noise_weights=[1.0, 1.0], hold_steps=5, ensure_miss=True, image_size=16, max_episode_steps=80, num_workers=0,
        progress=False,
    )  # fmt: skip
    result = collect(cfg)
    rows = {r["noise_mode"]: r for r in result["rows"] if r["task"] == "reach-v3"}
    assert rows["clean"]["success_rate"] == 1.0 and rows["near_miss"]["success_rate"] == 0.0
    ds = load_episodes(cfg.output_dir)
    assert ds.num_episodes == 4 and ds.meta["collection_config"]["hold_steps"] == 5
    modes = ds.dataset.unique("noise_mode")
    assert sorted(modes) == ["clean", "near_miss"]
    frames = frames_from_dataset(cfg.output_dir)
    assert frames.hard_negative.any()  # the held near misses sit where the clean episodes succeeded
    assert not frames.labels[frames.hard_negative].any()
