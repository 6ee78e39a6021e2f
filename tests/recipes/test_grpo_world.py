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
    assert json.loads((out / "config.json").read_text())["max_steps"] == 2
    assert list((out / "imagined").glob("*.png"))


@requires_metaworld
@pytest.mark.parametrize(
    "source, extra, logged",
    [
        ("keyframes", ["--keyframe_stride", "4"], "(keyframes)"),
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
    assert len([r for r in read_metrics(out) if "loss/policy" in r]) == 1


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


def test_bad_override_is_a_clear_error(tmp_path, cache):
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--config", "debug", "--output_dir", str(tmp_path), "--num_generations", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WLARL_CACHE": str(cache)},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "num_generations" in proc.stderr and "at least 2" in proc.stderr
