"""Newton-Schulz orthogonalisation (the "Muon" step of LaCT, paper §3.2 and App. A Eq. 16).

NS(G) approximates U Vᵀ of G = U S Vᵀ (the nearest semi-orthogonal matrix): normalise G by its Frobenius norm so
every singular value is <= 1, then iterate the odd polynomial X <- aX + (bA + cA²)X with A = XXᵀ, which pushes each
singular value towards ~1 without computing an SVD. Five steps leave the singular values in a band around 1 rather
than exactly at 1 (see tests/model/fast_weights/test_muon.py for the band we measure); that is enough for Muon.

Two coefficient schedules exist in the LaCT code (research/lact.md §1.4):
- "lm":    five per-iteration triples (LM `ttt_operation.py` and the minimal implementations; from modded-nanogpt).
- "paper": the fixed (3.4445, -4.7750, 2.0315) at every step (NVS, video, and the paper's Eq. 16).

The official code casts to bf16 before iterating; here the iteration runs in the input dtype (fp32 on CPU, fp64 in
tests) unless `dtype` asks for a cast (bf16 on GPU). The result always comes back in the input dtype.
"""
from __future__ import annotations

from typing import Literal

import torch

LM_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
PAPER_COEFFS = (3.4445, -4.7750, 2.0315)

Coeffs = Literal["lm", "paper"]


def ns_schedule(steps: int, coeffs: Coeffs = "lm") -> list[tuple[float, float, float]]:
    """The (a, b, c) triple of every iteration.

    "lm" with steps != 5: fewer steps take the first `steps` triples (the schedule goes from aggressive to
    conservative, so truncating it leaves X less converged but never unstable); more steps repeat the last triple,
    which is the most conservative one and keeps the singular values in its band.
    """
    if steps < 0:
        raise ValueError(f"newton_schulz steps must be >= 0, got {steps}")
    if coeffs == "paper":
        return [PAPER_COEFFS] * steps
    if coeffs == "lm":
        return [LM_COEFFS[min(i, len(LM_COEFFS) - 1)] for i in range(steps)]
    raise ValueError(f"unknown Newton-Schulz coefficients {coeffs!r}; expected 'lm' or 'paper'")


def newton_schulz(x: torch.Tensor, steps: int = 5, coeffs: Coeffs = "lm", eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Orthogonalise every matrix of x [..., m, n]; returns the same shape and dtype.

    `dtype` (e.g. torch.bfloat16 on GPU) is the dtype the iteration runs in; None keeps x's dtype.
    """
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs [..., m, n], got shape {tuple(x.shape)}")
    out_dtype = x.dtype
    X = x if dtype is None else x.to(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:  # iterate on the wide side: A = XXᵀ is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # Frobenius norm >= spectral norm, so ||X||_2 <= 1
    for a, b, c in ns_schedule(steps, coeffs):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    if tall:
        X = X.mT
    return X.to(out_dtype)


def newton_schulz_reference(x: torch.Tensor, steps: int = 5, coeffs: Coeffs = "lm",
                            eps: float = 1e-7) -> torch.Tensor:
    """Plain loop over the matrices of x [..., m, n] in float64, one at a time; returns float64.

    Written without batching or in-place tricks so it can serve as the oracle for `newton_schulz` and for the
    Muon step inside `lact_reference`. Differentiable.
    """
    lead = x.shape[:-2]
    mats = x.reshape(-1, *x.shape[-2:]).to(torch.float64)
    out = []
    for G in mats:
        X = G.T if G.shape[0] > G.shape[1] else G
        X = X / (torch.sqrt((X * X).sum()) + eps)
        for a, b, c in ns_schedule(steps, coeffs):
            A = X @ X.T
            B = b * A + c * (A @ A)
            X = a * X + B @ X
        out.append(X.T if G.shape[0] > G.shape[1] else X)
    return torch.stack(out).reshape(*lead, *x.shape[-2:])
