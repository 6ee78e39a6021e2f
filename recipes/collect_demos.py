"""Collect scripted-expert demonstrations with a noise mix in Meta-World into an episode dataset.

Launch (CPU; MuJoCo renders offscreen with EGL):

    MUJOCO_GL=egl python recipes/collect_demos.py --config debug --output_dir runs/demos_debug
    MUJOCO_GL=egl python recipes/collect_demos.py --config default --output_dir runs/demos --num_workers 2

Any `CollectConfig` field can be overridden, e.g. `--tasks reach-v3 push-v3 --episodes_per_task 10`.
Writes into --output_dir: the dataset (HF `save_to_disk` + `wlarl_meta.json`, replaced atomically),
`config.json` and `summary.json` (success rate and episode length per task and noise mode, also printed).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rollout.collect import CollectConfig, collect, format_table  # noqa: E402
from wlarl.cli import parse_config, save_config  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # parse
    cfg = parse_config(CollectConfig, "collect_demos")
    # build + run
    result = collect(cfg)
    # report
    save_config(cfg, cfg.output_dir)
    (Path(cfg.output_dir) / "summary.json").write_text(json.dumps(result, indent=2))
    print(format_table(result["rows"]))
    print(
        f"{result['env_steps']} env steps in {result['seconds']:.1f} s "
        f"({result['env_steps'] / max(result['seconds'], 1e-9):.0f} steps/s); dataset: {cfg.output_dir}"
    )


if __name__ == "__main__":
    main()
