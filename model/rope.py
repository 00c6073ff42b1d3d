"""Rotary position embedding (Su et al. 2021), half-split ("rotate_half") convention.

Positions restart at every document boundary of a packed sequence, so a document sees the same positions whether
it is packed or alone.
"""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [b, s] (int) -> (cos, sin), each [b, s, head_dim/2] in float64 (cast where applied)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    ang = positions.to(torch.float64)[..., None] * inv_freq  # float64: exact angles at long positions
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [b, s, h, D] where D is a multiple of the rotary dim r = 2 * cos.shape[-1].

    A wider head (the fast-weight heads are wider than attention heads) is rotated as D / r independent
    r-sized sub-vectors, i.e. exactly as if it were split into attention heads. The rotation is orthogonal, so
    it keeps the L2 norm that the fast-weight branch normalised before it.
    """
    b, s, h, d = x.shape
    r = 2 * cos.shape[-1]
    ct = torch.promote_types(x.dtype, torch.float32)
    xs = x.reshape(b, s, h * (d // r), r).to(ct)
    x1, x2 = xs[..., : r // 2], xs[..., r // 2:]
    c = cos[:, :, None, :].to(ct)
    sn = sin[:, :, None, :].to(ct)
    out = torch.cat([x1 * c - x2 * sn, x2 * c + x1 * sn], dim=-1)
    return out.reshape(b, s, h, d).to(x.dtype)
