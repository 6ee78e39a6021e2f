"""grpo_world as users launch it: `accelerate launch` with the debug preset, 1 and 2 CPU processes.

The first launch bootstraps a policy (collect → SFT → reward model) into a test-local cache; the second reuses it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import requires_metaworld

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "grpo_world.py"
ACCEL = ROOT / "recipes" / "configs" / "accelerate_configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(accel_config: str, *args: str, cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WLARL_CACHE": str(cache), "WANDB_MODE": "offline"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL / accel_config),
        "--main_process_port", str(free_port()), str(RECIPE), "--config", "debug", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wlarl-cache")


@requires_metaworld
def test_debug_one_process_bootstraps_trains_evaluates_and_checkpoints(tmp_path, cache):
    out = tmp_path / "run1"
    proc = launch("cpu_1proc.yaml", "--output_dir", str(out), cache=cache)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "bootstrap: no policy_path configured" in proc.stderr + proc.stdout
    rows = read_metrics(out)
    train = [r for r in rows if "loss/policy" in r]
    assert len(train) == 2
    assert all("reward/subgoal_success" in r and "rollout/imagined_success" in r for r in train)
    evals = [r for r in rows if "eval/real_success" in r]
    assert evals and 0.0 <= evals[-1]["eval/real_success"] <= 1.0
    # greedy and sampled real success at every evaluation
    assert all(0.0 <= r["eval/real_success_sampled"] <= 1.0 and "eval/reach-v3/success_sampled" in r for r in evals)
    assert any("verify/imagination_gap" in r for r in rows)
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["max_steps"] == 2
    # the bootstrap also trains the state reward model of state_success / state_progress
    assert (Path(config["state_reward_path"]) / "final" / "model.safetensors").is_file()
    assert list((out / "imagined").glob("*.png"))


@requires_metaworld
@pytest.mark.parametrize(
    "source, extra, logged",
    [
        # keyframe starts carry full states: the World Expert imagines them and state_progress scores them; the
        # advantage agreement replays imagined chunks in the real simulator at start and after the step
        (
            "keyframes",
            [
                "--keyframe_stride",
                "4",
                "--reward_funcs",
                "subgoal_success",
                "state_progress",
                "--agreement_steps",
                "1",
                "--agreement_positions",
                "late",
                "--horizon",
                "2",
            ],
            "(keyframes)",
        ),
        ("reset", ["--tasks", "reach-v3", "--num_reset_starts", "2"], "start states: 2 (reset)"),
    ],
)
def test_debug_start_state_sources_and_head_signal(tmp_path, cache, source, extra, logged):
    out = tmp_path / source
    proc = launch(
        "cpu_1proc.yaml", "--output_dir", str(out), "--max_steps", "1", "--eval_steps", "0", "--verify_steps", "0",
        "--save_strategy", "no", "--log_image_steps", "0", "--success_signal", "head", "--start_states", source,
        *extra, cache=cache,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert logged in text
    train = [r for r in read_metrics(out) if "loss/policy" in r]
    assert len(train) == 1
    if "state_progress" in extra:
        assert 0.0 <= train[0]["reward/state_progress"] <= 1.0
    if "--agreement_steps" in extra:
        rows = [r for r in read_metrics(out) if "verify/agreement_points" in r]
        assert len(rows) == 2  # train begin and step 1 (the end is the same step)
        for r in rows:
            assert 0.0 <= r["verify/advantage_agreement_return"] <= 1.0
            assert r["verify/agreement/real_episodes_used"] == r["verify/agreement_points"] * 4  # G rows each
        assert train[0]["budget/real_eval_episodes"] >= rows[0]["verify/agreement/real_episodes_used"]


@requires_metaworld
def test_debug_two_processes_reuses_the_cached_bootstrap(tmp_path, cache):
    out = tmp_path / "run2"
    proc = launch(
        "cpu_2proc.yaml", "--output_dir", str(out), "--eval_steps", "0", "--verify_steps", "0",
        "--max_steps", "2", cache=cache,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert "reusing the cached policy" in text
    rows = [r for r in read_metrics(out) if "loss/policy" in r]
    assert len(rows) == 2  # the main process logs once per step
    assert (out / "final" / "model.safetensors").is_file()


@requires_metaworld
@pytest.mark.parametrize("accel, procs", [("cpu_1proc.yaml", 1), ("cpu_2proc.yaml", 2)])
def test_debug_real_engine_trains_in_the_simulator_and_counts_its_budget(tmp_path, cache, accel, procs):
    out = tmp_path / f"real{procs}"
    proc = launch(
        accel, "--output_dir", str(out), "--engine", "real", "--real_max_episode_steps", "16", "--max_steps", "2",
        "--verify_steps", "0", "--tasks", "reach-v3", "--num_reset_starts", "2", "--eval_steps", "2",
        "--eval_episodes_per_task", "1", "--log_image_steps", "0", "--start_sampling", "signal",
        "--eval_tasks", "reach-v3", "push-v3", cache=cache,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert "engine real: the reward is the simulator's own success" in text
    assert "start states: 2 (reset)" in text
    rows = read_metrics(out)
    train = [r for r in rows if "loss/policy" in r]
    assert len(train) == 2
    assert all("rollout/real_success" in r and "reward/trajectory_success" in r for r in train)
    assert not any("rollout/imagined_success" in r for r in rows)
    # the debug preset: 2 starts × 4 samples per process and step, no dynamic sampling; 16 steps per episode at most
    rows_per_step = 2 * 4 * procs
    assert [r["budget/real_train_episodes"] for r in train] == [rows_per_step, 2 * rows_per_step]
    assert 0 < train[-1]["budget/real_train_env_steps"] <= 2 * rows_per_step * 16
    # evaluation at start and end, greedy and sampled, 1 episode per task of eval_tasks (trained on reach only):
    # counted apart from training
    evals = [r for r in rows if "eval/real_success" in r]
    assert len(evals) == 2 and all("eval/reach-v3/success" in r and "eval/push-v3/success" in r for r in evals)
    assert rows[-1]["budget/real_eval_episodes"] == 8
    assert rows[-1]["budget/real_train_episodes"] == 2 * rows_per_step
    saved = json.loads((out / "checkpoint-2" / "real_budget.json").read_text())
    assert saved["real_train_episodes"] == 2 * rows_per_step
    # the start sampler saw every process's groups: 2 steps × 2 starts × procs, the same counts on every process
    sampler = json.loads((out / "checkpoint-2" / "start_sampler.json").read_text())
    assert sum(sampler["seen"]) == 2 * 2 * procs and sampler["num_starts"] == 2
    assert all(r["starts/share/reach-v3"] == pytest.approx(1.0) for r in train)
    assert (out / "final" / "model.safetensors").is_file()


def test_bad_override_is_a_clear_error(tmp_path, cache):
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--config", "debug", "--output_dir", str(tmp_path), "--num_generations", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WLARL_CACHE": str(cache)},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "num_generations" in proc.stderr and "at least 2" in proc.stderr


@requires_metaworld
def test_debug_coevolution_rounds_collect_refresh_and_resume_bitwise(tmp_path, cache):
    out = tmp_path / "coevolve"
    flags = [
        "--output_dir", str(out), "--max_steps", "2", "--rounds", "2", "--round_episodes_per_task", "1",
        "--round_refresh_steps", "2", "--real_max_episode_steps", "16", "--tasks", "reach-v3", "--eval_steps", "0",
        "--verify_steps", "0", "--log_image_steps", "0", "--start_states", "keyframes", "--keyframe_stride", "4",
        "--reward_funcs", "state_progress", "--success_signal", "state", "--save_steps", "1",
        "--imagined_state_dynamics", "ensemble", "--dynamics_ensemble_steps", "20", "--start_sampling", "round_signal",
    ]  # fmt: skip
    proc = launch("cpu_1proc.yaml", *flags, cache=cache)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    rows = read_metrics(out)
    rounds = [r for r in rows if "round/collected_episodes" in r]
    assert [r["round/index"] for r in rounds] == [0.0, 1.0] and [r["step"] for r in rounds] == [0, 1]
    assert rounds[1]["round/start_states"] > rounds[0]["round/start_states"]  # each round adds branch points
    assert all(r["round/success/reach-v3"] in (0.0, 1.0) for r in rounds)  # one episode a round
    # round_signal: the one task holds every draw
    assert [r["starts/share/reach-v3"] for r in rows if "starts/share/reach-v3" in r] == [1.0, 1.0]
    train = [r for r in rows if "loss/policy" in r]
    assert train[-1]["budget/real_train_episodes"] == 2  # one episode per round of the one task
    for r in range(2):
        rdir = out / "rounds" / f"round_{r:03d}"
        assert (rdir / "episodes" / "wlarl_meta.json").is_file() and (rdir / "world.safetensors").is_file()
        assert (rdir / "state_reward" / "final" / "model.safetensors").is_file()
        # imagined_state_dynamics ensemble: the ensemble trained at start is retrained on every round's data
        assert (rdir / "dynamics_ensemble" / "final" / "model.safetensors").is_file()
    assert (out / "dynamics_ensemble" / "final" / "model.safetensors").is_file()
    assert all(r["round/dynamics_train_mse"] > 0 for r in rounds)
    first = (out / "final" / "model.safetensors").read_bytes()
    # kill after step 1 and resume: the rounds are rebuilt from disk, and the run ends where it ended
    proc = launch("cpu_1proc.yaml", *flags, "--resume_from_checkpoint", str(out / "checkpoint-1"), cache=cache)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert (out / "final" / "model.safetensors").read_bytes() == first


def test_success_signal_takes_the_classifier_of_reward_model_path_when_no_reward_carries_one(tmp_path):
    """A run rewarded by state rewards alone (the default preset) still ends imagined episodes with the classifier."""
    import importlib.util

    import torch

    from rewards import build_reward_scorer
    from rewards.success_classifier import SuccessClassifier, SuccessClassifierConfig

    spec = importlib.util.spec_from_file_location("grpo_world_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    model = SuccessClassifier(SuccessClassifierConfig(task_names=["reach-v3"], image_size=32, channels=[8, 16]))
    model.config.threshold = 0.37
    model.save_pretrained(tmp_path / "reward" / "final")
    images = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)

    predict, threshold = recipe.success_classifier_for_signal(
        build_reward_scorer(["shaping"]), str(tmp_path / "reward")
    )
    assert threshold == pytest.approx(0.37)
    assert torch.allclose(predict(images, ["reach-v3"] * 2), model.predict_proba(images, ["reach-v3"] * 2))
    assert recipe.success_classifier_for_signal(build_reward_scorer(["shaping"]), None) is None
    # a classifier among the reward functions comes first
    with_reward = build_reward_scorer(["subgoal_success"], reward_model_path=str(tmp_path / "reward"))
    predict, _ = recipe.success_classifier_for_signal(with_reward, "/nonexistent")
    assert predict.__self__ is with_reward.funcs[0].model
