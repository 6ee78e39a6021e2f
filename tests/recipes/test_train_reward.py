"""recipes/train_reward.py as a subprocess with the debug preset on a tiny synthetic dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "rewards"))

from reward_fixtures import make_episode_dataset  # noqa: E402


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_DATASETS_OFFLINE="1")
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONPATH=str(ROOT))
    return env


def test_train_reward_debug_raises_auroc_above_chance(tmp_path):
    data = tmp_path / "demos"
    make_episode_dataset(n_episodes=20, steps=10, tasks=("push-v3", "reach-v3"), seed=3).save_to_disk(str(data))
    out = tmp_path / "reward"
    proc = subprocess.run(
        [sys.executable, "recipes/train_reward.py", "--config", "debug", "--dataset_path", str(data),
         "--output_dir", str(out), "--max_steps", "40"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["eval/real/auroc"] > 0.75, results
    assert len(results["eval/real/reliability"]) == 10
    assert 0.0 < results["calibration/threshold"] < 1.0
    assert (out / "final" / "model.safetensors").is_file() and (out / "config.json").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "train/loss" in lines[0] and "eval/real/auroc" in lines[-1]
    from rewards.success_classifier import load_success_classifier

    assert load_success_classifier(out).config.task_names == ["push-v3", "reach-v3"]


def test_train_reward_with_an_extra_dataset_reports_it_apart(tmp_path):
    """--extra_dataset_paths: split by episode like the main dataset, held-out episodes reported as eval/extra/."""
    data, extra, out = tmp_path / "demos", tmp_path / "misses", tmp_path / "reward"
    make_episode_dataset(n_episodes=12, steps=8, seed=3).save_to_disk(str(data))
    make_episode_dataset(n_episodes=12, steps=8, seed=6).filter(lambda r: not r["episode_success"]).save_to_disk(
        str(extra)
    )
    proc = subprocess.run(
        [sys.executable, "recipes/train_reward.py", "--config", "debug", "--dataset_path", str(data),
         "--extra_dataset_paths", str(extra), "--output_dir", str(out), "--max_steps", "5"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[train_reward] test_extra:" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["eval/extra/positives"] == 0 and results["eval/extra/count"] > 0
    assert "eval/extra/hard_negative_false_positive_rate" in results and "eval/real/auroc" in results


def _train_reward(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "recipes/train_reward.py", "--config", "debug", *args],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_train_reward_progress_head_reports_progress_and_serves_subgoal_progress(tmp_path):
    data, out, plain = tmp_path / "demos", tmp_path / "reward", tmp_path / "plain"
    make_episode_dataset(n_episodes=20, steps=10, seed=3, shaped_reward=True).save_to_disk(str(data))
    proc = _train_reward(tmp_path, "--dataset_path", str(data), "--output_dir", str(out), "--max_steps", "80",
                         "--progress_head", "true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["eval/real/progress_spearman"] > 0.7, results
    assert "eval/real/progress_spearman_unsolved" in results
    from rewards import resolve_reward_func

    assert resolve_reward_func("subgoal_progress", reward_model_path=str(out)).__name__ == "subgoal_progress"
    # continuing from a model without the head and asking for one is refused
    proc = _train_reward(tmp_path, "--dataset_path", str(data), "--output_dir", str(plain), "--max_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train_reward(tmp_path, "--dataset_path", str(data), "--output_dir", str(tmp_path / "again"),
                         "--init_model_path", str(plain), "--progress_head", "true")  # fmt: skip
    assert proc.returncode != 0 and "has no progress head" in proc.stderr


def test_train_reward_config_errors_are_clear(tmp_path):
    proc = subprocess.run(
        [sys.executable, "recipes/train_reward.py", "--config", "debug", "--output_dir", str(tmp_path)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "--dataset_path" in proc.stderr


@pytest.mark.parametrize("preset", ["debug", "default"])
def test_train_reward_presets_parse(preset):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_reward_recipe", ROOT / "recipes" / "train_reward.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through the module
    spec.loader.exec_module(mod)
    from wlarl.cli import parse_config

    cfg = parse_config(mod.TrainRewardConfig, "train_reward", ["--config", preset, "--dataset_path", "x"])
    assert cfg.max_steps > 0 and cfg.dataset_path == "x"


def test_train_reward_with_too_few_episodes_to_hold_out(tmp_path):
    """The debug collection has 1–2 episodes per task and outcome: calibration falls back to training frames."""
    data = tmp_path / "demos"
    make_episode_dataset(n_episodes=2, steps=8, seed=4).save_to_disk(str(data))
    out = tmp_path / "reward"
    proc = subprocess.run(
        [sys.executable, "recipes/train_reward.py", "--config", "debug", "--dataset_path", str(data),
         "--output_dir", str(out), "--max_steps", "5"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibrating on the training frames" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert "calibration/threshold" in results and (out / "final" / "config.json").is_file()


def test_train_reward_continues_from_a_trained_model(tmp_path):
    data = tmp_path / "demos"
    make_episode_dataset(n_episodes=8, steps=8, seed=5).save_to_disk(str(data))
    base = [sys.executable, "recipes/train_reward.py", "--config", "debug", "--dataset_path", str(data)]
    run = dict(cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    first = subprocess.run([*base, "--output_dir", str(tmp_path / "a"), "--max_steps", "5"], **run)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(
        [*base, "--output_dir", str(tmp_path / "b"), "--init_model_path", str(tmp_path / "a"), "--max_steps", "0"],
        **run,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "b" / "final" / "model.safetensors").is_file()
    bad = subprocess.run([*base, "--output_dir", str(tmp_path / "c"), "--max_steps", "0"], **run)
    assert bad.returncode != 0 and "init_model_path" in bad.stderr
