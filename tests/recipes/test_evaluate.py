"""recipes/evaluate.py as a subprocess with the debug preset on an untrained tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONPATH=str(ROOT))
    return env


def _tiny_checkpoint(path: Path) -> Path:
    from rollout.sims.instructions import INSTRUCTIONS
    from wlarl.models.wla import WLAConfig, WLAPolicy, WLAProcessor, tiny_llama_config

    torch.manual_seed(0)
    proc = WLAProcessor.build([s for v in INSTRUCTIONS.values() for s in v] + ["move the gripper to the goal"], image_size=16,
                              max_instruction_tokens=24, max_subtask_tokens=8)  # fmt: skip
    cfg = WLAConfig(
        image_size=16, latent_size=4, latent_channels=4, tokenizer_channels=[8, 8, 8], state_dim=4, action_dim=4,
        chunk_size=4, backbone_config=tiny_llama_config(hidden_size=32, num_layers=1, num_heads=4),
        vocab_size=proc.vocab_size, max_instruction_tokens=24, max_subtask_tokens=8, num_meta_queries=2,
        action_hidden=32, world_hidden=32, world_layers=1, world_heads=4,
    )  # fmt: skip
    WLAPolicy(cfg, processor=proc).save_pretrained(path)
    return path


@pytest.mark.metaworld
def test_evaluate_debug_writes_json_and_table(tmp_path):
    pytest.importorskip("metaworld", reason="needs the metaworld extra: pip install -e '.[metaworld]'")
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "recipes/evaluate.py", "--config", "debug", "--checkpoint", str(ckpt), "--output_dir", str(out),
         "--sampled_temperature", "1.0"],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["real"]["episodes"] == 2 and results["seeds"] == [0, 1]
    assert 0.0 <= results["real"]["ci_low"] <= results["real"]["ci_high"] <= 1.0
    assert results["real_sampled"]["episodes"] == 2 and results["real_sampled"]["temperature"] == 1.0
    v = results["verify"]
    assert v["verify/tp"] + v["verify/fp"] + v["verify/fn"] + v["verify/tn"] == 2
    assert "verify/world_psnr_chunk1" in v and "verify/copy_psnr_chunk2" in v
    table = (out / "results.md").read_text()
    assert "| reach-v3 |" in table and "imagination gap" in table and "| sampled (T=1.0) |" in table
    assert any((out / "videos").iterdir()) and (out / "config.json").is_file()


def test_evaluate_requires_checkpoint(tmp_path):
    proc = subprocess.run(
        [sys.executable, "recipes/evaluate.py", "--config", "debug", "--output_dir", str(tmp_path)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "--checkpoint" in proc.stderr
