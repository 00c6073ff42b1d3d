"""Sliding-window causal attention that respects document boundaries of packed sequences.

A query at position t sees keys at [t - window + 1, t] that belong to its own document. The fast path tiles the
sequence into blocks of `window` tokens: a query block only ever needs its own block and the one before it, so the
cost is O(s * 2 * window) instead of O(s^2), with one SDPA call over all blocks. `window_attention_reference`
builds the full [s, s] mask and is the oracle for tests.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                     doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q, k, v: [b, h, s, hd]; doc_ids: [b, s] or None -> [b, h, s, hd]."""
    b, h, s, hd = q.shape
    if window >= s:  # one block: a plain masked SDPA is already optimal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_full_mask(s, window, doc_ids, q.device),
                                              scale=1.0 / math.sqrt(hd))
    B = window
    nb = -(-s // B)
    pad = nb * B - s
    if pad:  # pad at the end: padded keys come after every real query, the causal mask hides them
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    pos = torch.arange(nb * B, device=q.device)
    # Keys for block i are blocks i-1 and i: prepend one block of zeros so block 0 has a (fully masked) left half.
    kp = F.pad(k, (0, 0, B, 0)).unfold(2, 2 * B, B).transpose(-1, -2)  # [b, h, nb, 2B, hd]
    vp = F.pad(v, (0, 0, B, 0)).unfold(2, 2 * B, B).transpose(-1, -2)
    qb = q.reshape(b, h, nb, B, hd)
    qpos = pos.view(nb, B, 1)
    kpos = (torch.arange(nb, device=q.device).view(nb, 1, 1) * B - B
            + torch.arange(2 * B, device=q.device).view(1, 1, 2 * B))  # [nb, 1, 2B] absolute key positions
    mask = (kpos <= qpos) & (kpos > qpos - window) & (kpos >= 0)  # [nb, B, 2B]
    if doc_ids is not None:
        d = F.pad(doc_ids, (0, pad), value=-1) if pad else doc_ids
        dq = d.view(b, nb, B, 1)
        dk = F.pad(d, (B, 0), value=-2).unfold(1, 2 * B, B).view(b, nb, 1, 2 * B)
        mask = mask[None] & (dq == dk)  # [b, nb, B, 2B]
        mask = mask[:, None]  # broadcast over heads
    out = F.scaled_dot_product_attention(qb, kp, vp, attn_mask=mask, scale=1.0 / math.sqrt(hd))
    return out.reshape(b, h, nb * B, hd)[:, :, :s]


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int,
                               doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Full-mask oracle: explicit softmax over an [s, s] mask. q, k, v: [b, h, s, hd] -> [b, h, s, hd]."""
    s, hd = q.shape[-2], q.shape[-1]
    mask = _full_mask(s, window, doc_ids, q.device)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float() if scores.dtype != torch.float64 else scores, dim=-1).to(q.dtype) @ v


def _full_mask(s: int, window: int, doc_ids: Optional[torch.Tensor], device) -> torch.Tensor:
    """Boolean [s, s] (or [b, 1, s, s] with documents) mask: causal, within the window, same document."""
    i = torch.arange(s, device=device)
    mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)  # [s(q), s(k)]
    if doc_ids is not None:
        mask = (mask[None] & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]
    return mask
