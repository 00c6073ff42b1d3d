"""SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # gate/up are column-split and down row-split under tensor parallelism: one all-reduce per MLP.
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [b, s, D] -> [b, s, D]."""
        return self.down(F.silu(self.gate(x)) * self.up(x))
