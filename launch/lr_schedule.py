"""The learning-rate schedule, as a multiplier of optim.lr per optimizer step.

Linear warmup over `warmup_steps` (the first update already uses lr/warmup, not 0), then cosine decay to
`min_lr_ratio` at `steps` (Megatron/nanoGPT convention), or constant after warmup. Handed to DeepSpeed as a client
LambdaLR, so its position is saved and restored with the engine's checkpoint.
"""
from __future__ import annotations

import math

import torch

from .config import OptimConfig


def lr_multiplier(step: int, *, warmup: int, total: int, min_ratio: float, schedule: str) -> float:
    """Multiplier for the update with 0-based index `step`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optim: OptimConfig, total_steps: int):
    """A callable DeepSpeed invokes with the optimizer it built."""
    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
            s, warmup=optim.warmup_steps, total=total_steps, min_ratio=optim.min_lr_ratio, schedule=optim.schedule))
    return build
