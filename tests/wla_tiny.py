"""Tiny WLA configs, processors, observations and window batches for CPU tests (importable from any test)."""

from __future__ import annotations

import torch

from wlarl.models.wla import WLAConfig, WLAPolicy, WLAProcessor, tiny_llama_config
from wlarl.types import Observation

INSTRUCTIONS = ["reach the goal (reach-v3)", "push the puck to the goal (push-v3)"]
SUBTASKS = ["reach the goal", "reach the puck", "grasp the puck", "push the puck to the goal"]
IMAGE = 16


def tiny_processor() -> WLAProcessor:
    return WLAProcessor.build(INSTRUCTIONS + SUBTASKS, image_size=IMAGE, max_instruction_tokens=16,
                              max_subtask_tokens=8)  # fmt: skip


def tiny_config(action_head: str = "gaussian", vocab_size: int = 32, full_state_dim: int = 0) -> WLAConfig:
    return WLAConfig(
        full_state_dim=full_state_dim,
        image_size=IMAGE,
        latent_size=4,
        latent_channels=4,
        tokenizer_channels=[8, 8, 8],
        state_dim=4,
        action_dim=3,
        chunk_size=5,
        backbone_config=tiny_llama_config(hidden_size=32, num_layers=2, num_heads=4),
        vocab_size=vocab_size,
        max_instruction_tokens=16,
        max_subtask_tokens=8,
        num_meta_queries=2,
        action_head=action_head,
        action_hidden=32,
        flow_steps=3,
        world_hidden=32,
        world_layers=1,
        world_heads=4,
    )


def tiny_policy(action_head: str = "gaussian", seed: int = 0, full_state_dim: int = 0) -> WLAPolicy:
    torch.manual_seed(seed)
    proc = tiny_processor()
    return WLAPolicy(tiny_config(action_head, proc.vocab_size, full_state_dim), processor=proc).eval()


def tiny_obs(n: int = 3, seed: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(
        images=torch.randint(0, 256, (n, IMAGE, IMAGE, 3), dtype=torch.uint8, generator=g),
        states=torch.randn(n, 4, generator=g),
        instructions=[INSTRUCTIONS[i % 2] for i in range(n)],
        task_names=[["reach-v3", "push-v3"][i % 2] for i in range(n)],
    )


def tiny_batch(n: int = 8, seed: int = 0, action_dim: int = 3, horizon: int = 5) -> dict:
    """A fixed window batch with learnable structure: actions and next state follow the state, images are smooth."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(n, 4, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, IMAGE), torch.linspace(0, 1, IMAGE), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2], -1)  # [H, W, 3]
    img = (base[None] * (0.5 + 0.5 * torch.sigmoid(state[:, :1, None, None])) * 255).to(torch.uint8)
    nxt = (base[None] * (0.5 + 0.5 * torch.sigmoid(-state[:, :1, None, None])) * 255).to(torch.uint8)
    actions = torch.tanh(state[:, None, :action_dim]).expand(n, horizon, action_dim).clone()
    return {
        "image": img,
        "state": state,
        "actions": actions,
        "action_mask": torch.ones(n, horizon, dtype=torch.bool),
        "next_image": nxt,
        "next_state": state + 0.5,
        "next_success": state[:, 1] > 0,
        "subtask": [SUBTASKS[i % len(SUBTASKS)] for i in range(n)],
        "instruction": [INSTRUCTIONS[i % 2] for i in range(n)],
        "task_name": [["reach-v3", "push-v3"][i % 2] for i in range(n)],
    }
