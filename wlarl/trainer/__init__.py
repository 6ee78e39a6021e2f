"""The GRPO trainer and its callbacks."""

from wlarl.trainer.grpo_world_trainer import GRPOWorldTrainer, MetricsJsonlCallback, collate_starts

__all__ = ["GRPOWorldTrainer", "MetricsJsonlCallback", "collate_starts"]
