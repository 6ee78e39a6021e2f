"""The shipped example reward runs, and loads by dotted path from the repository root as grpo_world would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return env


def test_example_self_check_runs():
    proc = subprocess.run(
        [sys.executable, "examples/my_reward.py"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reward/stay_in_workspace" in proc.stdout and proc.stdout.strip().endswith("ok")


def test_dotted_path_resolves_from_the_working_directory(tmp_path):
    """Recipes run as scripts (sys.path[0] is recipes/, not the cwd): `examples.my_reward:...` must still load."""
    script = tmp_path / "launch.py"
    script.write_text(
        "import sys, os\n"
        "assert os.getcwd() not in sys.path\n"
        "from rewards import build_reward_scorer\n"
        "s = build_reward_scorer(['examples.my_reward:stay_in_workspace', 'examples.my_reward:make_height_reward'],"
        " min_height=0.1)\n"
        "print(s.names)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['stay_in_workspace', 'make_height_reward']" in proc.stdout


def test_grpo_world_config_accepts_the_example_by_dotted_path():
    from wlarl.cli import parse_config
    from wlarl.configs import GRPOWorldConfig

    cfg = parse_config(
        GRPOWorldConfig,
        "grpo_world",
        ["--output_dir", "/tmp/x", "--reward_funcs", "subgoal_success", "examples.my_reward:stay_in_workspace",
         "--reward_weights", "1.0", "0.5"],
    )  # fmt: skip
    assert cfg.reward_funcs == ["subgoal_success", "examples.my_reward:stay_in_workspace"]
    assert list(cfg.reward_weights) == [1.0, 0.5]


def test_reward_funcs_on_the_command_line_drop_the_preset_weights():
    from wlarl.cli import load_section, parse_config
    from wlarl.configs import GRPOWorldConfig

    assert load_section("debug", "grpo_world")["reward_weights"] == [1.0, 0.1]  # the preset has weights
    base = ["--config", "debug", "--output_dir", "/tmp/x"]
    one = parse_config(GRPOWorldConfig, "grpo_world", [*base, "--reward_funcs", "predicted_success"])
    assert one.reward_funcs == ["predicted_success"] and one.reward_weights is None  # 1.0 each
    two = parse_config(GRPOWorldConfig, "grpo_world", [*base, "--reward_funcs", "predicted_success", "shaping"])
    assert two.reward_weights is None  # same count as the preset: still not the preset's weights
    given = parse_config(
        GRPOWorldConfig, "grpo_world", [*base, "--reward_funcs", "predicted_success", "--reward_weights", "2.0"]
    )
    assert list(given.reward_weights) == [2.0]
    preset = parse_config(GRPOWorldConfig, "grpo_world", base)
    assert list(preset.reward_weights) == [1.0, 0.1]
