"""The LaCT fast-weight branch of the hybrid mixer (LM layer; research/lact.md §1.2, §1.6, §1.7).

Given the block input x and the raw q, k, v of the projection it shares with window attention (GAU-style), per token:
  q, k <- per-channel affine (scale 1, offset 0 at init) -> SiLU      v <- SiLU(v) if cfg.v_silu
  split into nh heads of d = D/nh; L2-normalise q, k per head (eps 1e-5, fp32); RoPE of the attention (rotary dim =
  attention head dim, d a multiple of it) unless cfg.rope is False
  η = softplus(lr_proj(x) + softplus⁻¹(base_lr)) in fp32, one per head and fast-weight matrix   [b, nh, s, 3]
  β = sigmoid(momentum_proj(x)) per head                                                           [b, nh, s]
  o = lact_chunked(...)  (lact_op.py: chunked SwiGLU fast weights, momentum, Muon, renorm, documents)
  out = RMSNorm_d(o) * SiLU(gate_proj(x)) per head, heads merged -> [b, s, D]
The mixer adds `out` to the window-attention output before o_proj.

Differences from the official layer, on purpose: the state does not leak across packed documents (doc_ids), and
gate_proj has no bias (the official `ttt_scale_proj` keeps nn.Linear's default bias, zero-initialised).

Tensor parallelism (later, in parallel/): every per-head parameter keeps its heads contiguous along dim 0 (see
`head_sharded_params`), and forward reads the local head count from the parameter shapes, so slicing heads
[h0, h1) of every listed parameter and channels [h0*d, h1*d) of q, k, v gives exactly those heads' output channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FastWeightConfig
from ..norm import RMSNorm
from ..rope import apply_rope
from .base import FastWeightRule
from .lact_op import LaCTState, lact_chunked
from .lact_reference import lact_reference

L2_EPS = 1e-5
LOW_RANK_GAIN = 0.5  # `fw_init_gain` of the LM configs


class LaCT(FastWeightRule):
    kind = "nonlinear"

    def __init__(self, dim: int, cfg: FastWeightConfig, *, rope_dim: int, init_std: float = 0.02,
                 norm_eps: float = 1e-6, gate_init: str = "normal"):
        super().__init__()
        nh = cfg.n_heads
        if dim % nh:
            raise ValueError(f"dim={dim} is not divisible by fast_weight.n_heads={nh}")
        d = dim // nh
        dh = int(round(d * cfg.inter_multi))
        if cfg.rope and d % rope_dim:
            raise ValueError(f"fast-weight head dim {d} is not a multiple of the rotary dim {rope_dim}")
        if gate_init not in ("normal", "zero"):
            raise ValueError(f"gate_init must be 'normal' or 'zero', got {gate_init!r}")
        self.cfg, self.init_std, self.gate_init = cfg, init_std, gate_init
        self.qk_scale = nn.Parameter(torch.empty(dim, 2))  # [:, 0] for q, [:, 1] for k
        self.qk_offset = nn.Parameter(torch.empty(dim, 2))
        if cfg.low_rank_init > 0:  # w0, w2 = L R + 0.5 I (fewer parameters; the LM configs use rank 32)
            r = cfg.low_rank_init
            self.w0_left, self.w2_left = (nn.Parameter(torch.empty(nh, dh, r)) for _ in range(2))
            self.w0_right, self.w2_right = (nn.Parameter(torch.empty(nh, r, d)) for _ in range(2))
        else:
            self.w0 = nn.Parameter(torch.empty(nh, dh, d))  # gate
            self.w2 = nn.Parameter(torch.empty(nh, dh, d))  # up
        self.w1 = nn.Parameter(torch.empty(nh, d, dh))  # down
        self.lr_proj = nn.Linear(dim, 3 * nh, bias=True)  # output h*3 + j = head h, matrix j
        self.momentum_proj = nn.Linear(dim, nh, bias=True) if cfg.momentum else None
        self.out_norm = RMSNorm(d, eps=norm_eps)  # per head over d, one weight shared by the heads
        self.gate_proj = nn.Linear(dim, nh, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.cfg
        self.qk_scale.fill_(1.0)
        self.qk_offset.zero_()
        d, dh = self.w1.shape[1], self.w1.shape[2]
        if cfg.low_rank_init > 0:
            for p in (self.w0_left, self.w2_left):
                p.normal_(0.0, LOW_RANK_GAIN / math.sqrt(cfg.low_rank_init))
            for p in (self.w0_right, self.w2_right):
                p.normal_(0.0, LOW_RANK_GAIN / math.sqrt(d))
        else:
            self.w0.normal_(0.0, 1.0 / math.sqrt(d))  # N(0, 1/fan_in), paper App. A
            self.w2.normal_(0.0, 1.0 / math.sqrt(d))
        self.w1.normal_(0.0, 1.0 / math.sqrt(dh))
        for lin in (self.lr_proj, self.momentum_proj):
            if lin is not None:
                lin.weight.normal_(0.0, self.init_std)
                lin.bias.zero_()
        if self.gate_init == "zero":  # the branch starts at exactly 0 (as the video model does)
            self.gate_proj.weight.zero_()
        else:
            self.gate_proj.weight.normal_(0.0, self.init_std)
        self.out_norm.weight.fill_(1.0)

    def fast_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The learned initial fast weights: w0, w2 [nh, dh, d], w1 [nh, d, dh]."""
        if self.cfg.low_rank_init > 0:
            eye = 0.5 * torch.eye(self.w0_left.shape[1], self.w0_right.shape[2], device=self.w1.device,
                                  dtype=self.w0_left.dtype)
            return self.w0_left @ self.w0_right + eye, self.w1, self.w2_left @ self.w2_right + eye
        return self.w0, self.w1, self.w2

    def head_sharded_params(self) -> dict[str, int]:
        """Parameter name -> rows per head along dim 0; every other parameter is replicated across heads."""
        d = self.w1.shape[1]
        rows = {"qk_scale": d, "qk_offset": d, "w1": 1, "lr_proj.weight": 3, "lr_proj.bias": 3,
                "gate_proj.weight": 1}
        rows.update({n: 1 for n in ("w0_left", "w0_right", "w2_left", "w2_right")} if self.cfg.low_rank_init > 0
                    else {"w0": 1, "w2": 1})
        if self.momentum_proj is not None:
            rows.update({"momentum_proj.weight": 1, "momentum_proj.bias": 1})
        return rows

    def forward(self, x, q, k, v, rope=None, doc_ids=None, stats=None):
        """x, q, k, v: [b, s, D] -> [b, s, D]; rope = (cos, sin) [b, s, rope_dim/2]; doc_ids [b, s] or None."""
        return self._run(x, q, k, v, rope, doc_ids, stats, None, False)

    def init_state(self, batch_size: int) -> None:
        """None stands for the learned initial weights (lact_chunked with initial_state=None)."""
        return None

    def step(self, x, q, k, v, state: LaCTState | None, rope=None, doc_ids=None):
        """Next segment of a causal stream: (out [b, s, D], LaCTState); equal to one forward over the whole stream."""
        return self._run(x, q, k, v, rope, doc_ids, None, state, True)

    def _run(self, x, q, k, v, rope, doc_ids, stats, state, return_state):
        cfg = self.cfg
        b, s, D = q.shape
        w0, w1, w2 = self.fast_weights()
        nh = w1.shape[0]  # local heads: read from the (possibly sharded) parameters, never from cfg
        d = D // nh
        q = F.silu(q * self.qk_scale[:, 0] + self.qk_offset[:, 0])
        k = F.silu(k * self.qk_scale[:, 1] + self.qk_offset[:, 1])
        v = F.silu(v) if cfg.v_silu else v
        q, k, v = (t.reshape(b, s, nh, d) for t in (q, k, v))
        q, k = _l2_normalize(q), _l2_normalize(k)
        if cfg.rope and rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # after the L2 norm, which the rotation preserves
        ft = torch.promote_types(x.dtype, torch.float32)
        lr = F.softplus(self.lr_proj(x).to(ft) + _inv_softplus(cfg.base_lr))  # [b, s, nh*3], fp32 like the paper
        lr = lr.reshape(b, s, nh, 3).transpose(1, 2)
        beta = None
        if self.momentum_proj is not None:
            beta = torch.sigmoid(self.momentum_proj(x).to(ft)).transpose(1, 2)  # [b, nh, s]
        op = lact_reference if cfg.impl == "reference" else lact_chunked
        res = op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), lr, w0, w1, w2,
                 chunk_size=cfg.chunk_size, beta=beta, muon_steps=cfg.muon_steps if cfg.muon else 0,
                 muon_coeffs=cfg.muon_coeffs, renorm=cfg.renorm, order=cfg.order, doc_ids=doc_ids,
                 checkpoint_chunks=cfg.checkpoint_chunks, stats=stats, initial_state=state,
                 return_state=return_state)
        o, new_state = res if return_state else (res, None)
        o = self.out_norm(o.transpose(1, 2))  # [b, s, nh, d]
        out = (o * F.silu(self.gate_proj(x))[..., None]).reshape(b, s, D)
        return (out, new_state) if return_state else out


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf / (xf.norm(dim=-1, keepdim=True) + L2_EPS)).to(x.dtype)


def _inv_softplus(y: float) -> float:
    """softplus⁻¹(y) = y + log(1 - e^-y), so softplus(0 + this) = base_lr at init."""
    return y + math.log(-math.expm1(-y))
