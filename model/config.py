"""Model configuration: plain dataclasses, validated on construction.

The YAML loader (`lactron.launch.config`) builds these from the `model:` section; the model code only needs them,
so a notebook can build a model with `LMConfig(dim=256, ...)` and no YAML at all. Sizes are *global* (unsharded);
tensor parallelism divides heads and hidden units later.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class ModelConfigError(ValueError):
    """A model setting that cannot work; the message names the field and the numbers."""


@dataclass
class FastWeightConfig:
    """The fast-weight branch of the hybrid mixer (research/lact.md §1)."""

    rule: Literal["lact", "none"] = "lact"
    """Which fast-weight rule; `none` gives a window-attention-only model (the baseline)."""
    n_heads: int = 4
    """Fast-weight heads; each has its own SwiGLU fast weights of head dim `dim / n_heads`."""
    chunk_size: int = 2048
    """Tokens per fast-weight update (a chunk is applied with the weights from before it, then used to update)."""
    inter_multi: float = 1.0
    """Hidden width of the fast SwiGLU = head_dim * inter_multi (`r` in the paper)."""
    base_lr: float = 1e-3
    """Per-token learning rates are softplus(lr_proj(x) + softplus^-1(base_lr))."""
    momentum: bool = True
    """Momentum on the chunk update, beta per token from sigmoid(Linear(x)), averaged over the chunk."""
    muon: bool = True
    """Orthogonalise the update with Newton-Schulz (Muon) before applying it."""
    muon_steps: int = 5
    muon_coeffs: Literal["lm", "paper"] = "lm"
    """`lm`: the five per-iteration triples of the LaCT LM code; `paper`: the fixed (3.4445, -4.7750, 2.0315)."""
    renorm: bool = True
    """After each update rescale every row of each fast weight to the row norm of the initial weight."""
    order: Literal["causal", "bidirectional"] = "causal"
    """`causal`: apply-then-update (LM); `bidirectional`: update-then-apply within each chunk."""
    rope: bool = True
    """Rotate the fast q/k with the attention's RoPE after L2 normalisation (`False` = NoPE)."""
    v_silu: bool = True
    """SiLU on the fast v (the LaCT LM default; the fused-kernel config turns it off)."""
    low_rank_init: int = 0
    """If > 0, w0/w2 are initialised as L @ R + 0.5 * I with rank `low_rank_init` (the LM configs use 32)."""
    checkpoint_chunks: bool = False
    """Recompute each chunk's inner forward in backward: memory linear in sequence length with a small constant."""
    impl: Literal["fast", "reference"] = "fast"
    """`reference` runs the naive float64-capable loop (for tests and debugging only: slow)."""

    def __post_init__(self) -> None:
        if self.rule == "none":
            return
        if self.n_heads < 1:
            raise ModelConfigError(f"model.fast_weight.n_heads must be >= 1, got {self.n_heads}")
        if self.chunk_size < 1:
            raise ModelConfigError(f"model.fast_weight.chunk_size must be >= 1, got {self.chunk_size}")
        if self.inter_multi <= 0:
            raise ModelConfigError(f"model.fast_weight.inter_multi must be > 0, got {self.inter_multi}")
        if self.base_lr <= 0:
            raise ModelConfigError(f"model.fast_weight.base_lr must be > 0, got {self.base_lr}")
        if self.muon and self.muon_steps < 1:
            raise ModelConfigError(f"model.fast_weight.muon_steps must be >= 1 when muon is on, got {self.muon_steps}")


@dataclass
class LMConfig:
    """A decoder-only LM: per block RMSNorm -> (window attention + fast weights) -> RMSNorm -> SwiGLU MLP."""

    kind: Literal["lm"] = "lm"
    vocab_size: int = 257
    """Tokenizer vocabulary (the byte tokenizer has 256 bytes + EOS)."""
    pad_vocab_to: int = 128
    """The embedding is padded to a multiple of this (times TP), Megatron-style; padded logits are masked."""
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    """Attention heads (head dim = dim / n_heads)."""
    mlp_hidden: int = 0
    """SwiGLU hidden width; 0 means 4 * dim rounded up to a multiple of 64 (the LaCT LM uses hidden_ratio 4)."""
    window: int = 2048
    """Sliding-window attention: a token sees itself and the window - 1 before it."""
    rope_theta: float = 1e6
    norm_eps: float = 1e-6
    init_std: float = 0.02
    tie_embeddings: bool = False
    fast_weight: FastWeightConfig = field(default_factory=FastWeightConfig)

    def __post_init__(self) -> None:
        if isinstance(self.fast_weight, dict):  # convenience for notebooks
            self.fast_weight = FastWeightConfig(**self.fast_weight)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "window"):
            if getattr(self, name) < 1:
                raise ModelConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ModelConfigError(f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ModelConfigError(f"attention head dim {self.head_dim} must be even for RoPE")
        fw = self.fast_weight
        if fw.rule != "none":
            if self.dim % fw.n_heads:
                raise ModelConfigError(
                    f"model.dim={self.dim} is not divisible by model.fast_weight.n_heads={fw.n_heads}")
            if fw.rope and self.fw_head_dim % self.head_dim:
                raise ModelConfigError(
                    f"fast-weight head dim {self.fw_head_dim} must be a multiple of the attention head dim "
                    f"{self.head_dim} to share its RoPE (or set model.fast_weight.rope=false)")
            if fw.order == "causal" and self.window < fw.chunk_size:
                # Apply-then-update leaves a token blind to the earlier tokens of its own chunk; the window
                # attention has to cover them (paper App. B.2), so window >= chunk.
                raise ModelConfigError(
                    f"model.window={self.window} < model.fast_weight.chunk_size={fw.chunk_size}: with causal "
                    f"apply-then-update the attention window must cover a whole chunk")
        if self.mlp_hidden == 0:
            self.mlp_hidden = 64 * ((4 * self.dim + 63) // 64)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def fw_head_dim(self) -> int:
        return self.dim // self.fast_weight.n_heads

    @property
    def fw_hidden(self) -> int:
        return int(round(self.fw_head_dim * self.fast_weight.inter_multi))

    def padded_vocab(self, tp: int = 1) -> int:
        m = self.pad_vocab_to * tp
        return m * ((self.vocab_size + m - 1) // m)

