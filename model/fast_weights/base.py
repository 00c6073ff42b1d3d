"""The interface every fast-weight rule implements (the fast-weight branch of the hybrid mixer).

A rule reads the mixer's shared q, k, v projections (plus the block input x for its own per-token gates and learning
rates) and returns its branch output, which the mixer adds to the window-attention output before o_proj
(research/lact.md §1.7). `kind` says what the state update is, so parallel code can pick a strategy without knowing
the rule:
- "additive":  S <- S + k vᵀ-style sums (linear attention); chunks combine by prefix sums.
- "affine":    S <- A S + B (gated/delta rules); chunks combine by an associative scan.
- "nonlinear": the update depends non-linearly on S (LaCT: SwiGLU gradient, Muon, renorm); chunks are strictly
               sequential, so context parallelism can only split *within* a chunk (all-reduce the chunk gradient).

Streaming (prefill then decode) goes through `init_state` and `step`: `step` processes a segment (one token or many)
continuing from a state and returns the new state, with outputs identical to one call over the whole sequence. For
a chunked rule the apply and the update of a token are not separable (the update waits for its chunk to fill),
so one `step` does both.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

Kind = Literal["additive", "affine", "nonlinear"]


class FastWeightRule(nn.Module):
    kind: ClassVar[Kind]

    def forward(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, doc_ids: torch.Tensor | None = None,
                stats: dict | None = None) -> torch.Tensor:
        """x, q, k, v: [b, s, D] (D may be a tensor-parallel slice of heads) -> [b, s, D].

        rope: (cos, sin) [b, s, rope_dim/2] of the attention; doc_ids: [b, s] non-decreasing document ids of a
        packed sequence (no state crosses a boundary); stats: a dict to fill with detached floats, or None.
        """
        raise NotImplementedError

    def init_state(self, batch_size: int) -> Any:
        """The state at the start of a sequence, for `step`."""
        raise NotImplementedError

    def step(self, x, q, k, v, state, rope=None, doc_ids=None) -> tuple[torch.Tensor, Any]:
        """Like forward for the next segment of a stream: returns (output [b, s, D], new state)."""
        raise NotImplementedError
