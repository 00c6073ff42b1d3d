"""lactron.model.fast_weights: the fast-weight branch of the hybrid mixer.

- `base.FastWeightRule`: the interface (forward, init_state/step for streaming, `kind`).
- `lact.LaCT`: LaCT SwiGLU fast weights (the module); `lact_op.lact_chunked`: the functional fast path;
  `lact_reference.lact_reference`: the naive oracle; `muon.newton_schulz`: the Muon orthogonalisation.
"""
from __future__ import annotations

from ..config import FastWeightConfig
from .base import FastWeightRule
from .lact import LaCT
from .lact_op import LaCTState, inner_grads, lact_chunked
from .lact_reference import lact_reference
from .muon import newton_schulz, newton_schulz_reference

__all__ = ["FastWeightRule", "LaCT", "LaCTState", "build_fast_weight", "inner_grads", "lact_chunked",
           "lact_reference", "newton_schulz", "newton_schulz_reference"]


def build_fast_weight(cfg: FastWeightConfig, dim: int, rope_dim: int, *, init_std: float = 0.02,
                      norm_eps: float = 1e-6, gate_init: str = "normal") -> FastWeightRule | None:
    """The module for cfg.rule ("lact"), or None for "none" (window attention only)."""
    if cfg.rule == "none":
        return None
    if cfg.rule == "lact":
        return LaCT(dim, cfg, rope_dim=rope_dim, init_std=init_std, norm_eps=norm_eps, gate_init=gate_init)
    raise ValueError(f"unknown fast_weight.rule {cfg.rule!r}")
