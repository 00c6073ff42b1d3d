"""RMSNorm (Zhang & Sennrich 2019), computed in at least float32 whatever the activation dtype."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> same shape and dtype."""
        ct = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64 for reference tests
        xf = x.to(ct)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.to(ct)).to(x.dtype)
