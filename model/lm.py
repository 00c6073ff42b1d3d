"""The LaCT language model: embedding -> N hybrid blocks (window attention + fast weights, SwiGLU MLP) -> RMSNorm ->
LM head (research/lact.md §2).

Packed sequences: `doc_ids` [b, s] marks documents; attention never crosses a boundary, fast-weight state resets at
each boundary, and `positions` (restarting at 0 per document) drive RoPE, so a document sees the same function
packed or alone (up to the fast-weight chunk grid, see model/fast_weights/lact_op.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .block import Block
from .config import LMConfig
from .norm import RMSNorm
from .rope import rope_angles


class LaCTLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        V = cfg.padded_vocab()
        self.embed = nn.Embedding(V, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, V, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) for embeddings and linears; residual-output projections scaled by 1/sqrt(2L) (GPT-2)
        so the residual stream's variance does not grow with depth. Fast-weight modules own their init."""
        std = self.cfg.init_std
        for name, m in self.named_modules():
            if ".fw" in name:
                continue
            if isinstance(m, (nn.Linear, nn.Embedding)):
                s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj", "down")) else std
                nn.init.normal_(m.weight, mean=0.0, std=s)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, targets: Optional[torch.Tensor] = None, *,
                doc_ids: Optional[torch.Tensor] = None, positions: Optional[torch.Tensor] = None,
                stats: Optional[dict] = None, reduction: str = "mean") -> torch.Tensor:
        """input_ids [b, s] -> logits [b, s, V] (padded vocab entries are -inf), or, with targets [b, s], the
        cross-entropy: a scalar mean over tokens (`reduction="mean"`), or per token [b, s] (`"none"`)."""
        b, s = input_ids.shape
        if positions is None:
            positions = torch.arange(s, device=input_ids.device).expand(b, s)
        rope = rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embed(input_ids)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope, doc_ids, None if stats is None else stats.setdefault(f"layer{i}", {}))
        logits = self.lm_head(self.norm(x))
        if logits.shape[-1] > self.cfg.vocab_size:  # padding exists only for TP divisibility: never predict it
            logits = logits.masked_fill(self._vocab_pad_mask(logits), float("-inf"))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return loss if reduction == "mean" else loss.view(b, s)

    def _vocab_pad_mask(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.arange(logits.shape[-1], device=logits.device) >= self.cfg.vocab_size

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n
