"""One pre-norm Transformer block: x + mixer(norm(x)), then x + mlp(norm(x))."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import LMConfig
from .mixer import HybridMixer
from .mlp import SwiGLU
from .norm import RMSNorm


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mixer = HybridMixer(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, rope, doc_ids: Optional[torch.Tensor] = None,
                stats: Optional[dict] = None) -> torch.Tensor:
        """x [b, s, D] -> [b, s, D]."""
        x = x + self.mixer(self.norm1(x), rope, doc_ids, stats)
        return x + self.mlp(self.norm2(x))
