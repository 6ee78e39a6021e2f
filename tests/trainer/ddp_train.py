"""Two-rank GRPO run used by test_distributed.py (launched with accelerate; not collected by pytest)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("ACCELERATE_USE_CPU", "true")
sys.path.insert(
    0, str(Path(__file__).resolve().parents[2])
)  # the repository first: tests/rewards must not shadow rewards
sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from test_grpo_trainer import _trainer  # noqa: E402

from wlarl.utils.distributed import exit_without_teardown  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    trainer = _trainer(out, max_steps=2, save_strategy="no", log_image_steps=0)
    trainer.train()
    acc = trainer.accelerator
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(trainer.model).parameters()])
    record = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "param_sum": float(flat.double().sum()),
        "param_abs_sum": float(flat.double().abs().sum()),
        "global_step": trainer.state.global_step,
    }
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(record))
    acc.end_training()
    if acc.num_processes > 1:
        exit_without_teardown()


if __name__ == "__main__":
    main()
