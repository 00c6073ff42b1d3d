"""The hybrid token mixer of LaCT (research/lact.md §1.2, §1.7, §2): sliding-window attention and a fast-weight
branch share one QKV projection; their outputs are summed before the output projection.

The attention branch gives exact local (intra-chunk) causal context; the fast-weight branch carries memory of
everything before the window, compressed into per-sequence weights updated once per chunk.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import window_attention, window_attention_reference
from .config import LMConfig
from .fast_weights import build_fast_weight
from .rope import apply_rope


class HybridMixer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        D = cfg.dim
        self.head_dim = cfg.head_dim
        self.window = cfg.window
        self.reference = cfg.fast_weight.impl == "reference"
        # Layout of the fused projection's output: [q (D) | k (D) | v (D)], each block in head order, so tensor
        # parallelism can give every rank a contiguous range of heads from each of the three blocks.
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.fw = build_fast_weight(cfg.fast_weight, D, rope_dim=cfg.head_dim, init_std=cfg.init_std,
                                    norm_eps=cfg.norm_eps)
        self.o_proj = nn.Linear(D, D, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                doc_ids: Optional[torch.Tensor] = None, stats: Optional[dict] = None) -> torch.Tensor:
        """x [b, s, D] -> [b, s, D]. rope = (cos, sin) [b, s, head_dim/2]; doc_ids [b, s] or None."""
        b, s, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each [b, s, D/tp]
        qa, ka, va = (t.view(b, s, -1, self.head_dim) for t in (q, k, v))  # heads from the shape: TP-agnostic
        qa, ka = apply_rope(qa, *rope), apply_rope(ka, *rope)
        attn = window_attention_reference if self.reference else window_attention
        o = attn(qa.transpose(1, 2), ka.transpose(1, 2), va.transpose(1, 2), window=self.window, doc_ids=doc_ids)
        o = o.transpose(1, 2).reshape(b, s, -1)  # [b, s, D/tp]
        if self.fw is not None:
            o = o + self.fw(x, q, k, v, rope=rope, doc_ids=doc_ids, stats=stats)
        return self.o_proj(o)
