"""Naive LaCT fast-weight operator: the obviously-correct oracle for `lact_op.lact_chunked` (fla-style `naive.py`).

Same semantics as `lact_chunked` (read its module docstring), written the slow, literal way: loop over batch rows,
over the documents of each row, over the pieces of the global chunk grid that fall inside each document, and over
heads. Each document starts from the initial weights with zero momentum, so no state can cross a boundary by
construction. The chunk update is the gradient of the inner loss computed by **autograd**, one matrix at a time
(an independent check of the hand-derived formulas in `lact_op`), with create_graph=True so that the outer gradients
flow through every update; Muon uses `newton_schulz_reference`; renorm is an explicit per-row loop.

Meant for float64 and tiny shapes (tests, debugging); no checkpointing, no stats, no streaming state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .muon import newton_schulz_reference


def lact_reference(q, k, v, lr, w0, w1, w2, *, chunk_size, beta=None, muon_steps=0, muon_coeffs="lm",
                   renorm=True, order="causal", doc_ids=None, checkpoint_chunks=False, initial_state=None,
                   return_state=False, stats=None, matmul_dtype=None):
    """q, k, v: [b, nh, s, d]; lr: [b, nh, s, 3]; beta: [b, nh, s] | None; w0, w2: [nh, dh, d]; w1: [nh, d, dh];
    doc_ids: [b, s] | None. Returns o [b, nh, s, d] in q's dtype. checkpoint_chunks/stats/matmul_dtype are ignored.
    """
    if initial_state is not None or return_state:
        raise NotImplementedError("lact_reference has no streaming state; compare one-shot runs instead")
    if order not in ("causal", "bidirectional"):
        raise ValueError(f"unknown order {order!r}")
    b, nh, s, d = q.shape
    ct = torch.promote_types(torch.promote_types(q.dtype, w0.dtype), torch.float32)
    with torch.enable_grad():  # the inner gradients need autograd even when the caller is in no_grad
        rows = []
        for r in range(b):
            docs = [0] * s if doc_ids is None else doc_ids[r].tolist()
            heads = []
            for h in range(nh):
                pieces_out = []
                for start, end in _document_spans(docs):
                    inputs = [t[r, h, start:end].to(ct) for t in (q, k, v, lr)]
                    bt = None if beta is None else beta[r, h, start:end].to(ct)
                    init = [w[h].to(ct) for w in (w0, w1, w2)]
                    pieces_out.append(_run_document(*inputs, bt, init, start, chunk_size, muon_steps,
                                                    muon_coeffs, renorm, order))
                heads.append(torch.cat(pieces_out))
            rows.append(torch.stack(heads))
        return torch.stack(rows).to(q.dtype)


def _document_spans(docs):
    """[start, end) of every run of equal ids in the list `docs`."""
    spans, start = [], 0
    for t in range(1, len(docs) + 1):
        if t == len(docs) or docs[t] != docs[start]:
            spans.append((start, t))
            start = t
    return spans


def _run_document(q, k, v, lr, beta, init, start, C, muon_steps, muon_coeffs, renorm, order):
    """One document of one head; q, k, v: [n, d], lr: [n, 3], beta: [n] | None, init = [w0, w1, w2].

    The document occupies global positions [start, start + n); its pieces are its intersections with the global
    chunk grid [0, C), [C, 2C), ...
    """
    n = q.shape[0]
    cuts = [0] + [c - start for c in range((start // C + 1) * C, start + n, C)] + [n]
    pieces = list(zip(cuts[:-1], cuts[1:]))
    init_norms = [_row_norms(w) for w in init]
    W = list(init)
    M = [torch.zeros_like(w) for w in init]
    out = []
    for i, (a, e) in enumerate(pieces):
        if order == "causal":
            out.append(_swiglu(W, q[a:e]))
            if i < len(pieces) - 1:  # the last piece's update would be read by no token of this document
                W, M = _update(W, M, k[a:e], v[a:e], lr[a:e], None if beta is None else beta[a:e],
                               init_norms, muon_steps, muon_coeffs, renorm)
        else:
            W, M = _update(W, M, k[a:e], v[a:e], lr[a:e], None if beta is None else beta[a:e],
                           init_norms, muon_steps, muon_coeffs, renorm)
            out.append(_swiglu(W, q[a:e]))
    return torch.cat(out)


def _swiglu(W, x):
    """f_W(x) = W1 [SiLU(W0 x) ⊙ (W2 x)] for x [n, d] -> [n, d]."""
    w0, w1, w2 = W
    return (w1 @ (F.silu(w0 @ x.T) * (w2 @ x.T))).T


def _update(W, M, k, v, lr, beta, init_norms, muon_steps, muon_coeffs, renorm):
    new_W, new_M = [], []
    for j in range(3):
        # Gradient ASCENT on Σ_i ηj_i f_W(k_i)·v_i (= descent on the negative dot-product loss).
        Wj = W[j] if W[j].requires_grad else W[j].detach().requires_grad_(True)
        Wg = [Wj if i == j else W[i] for i in range(3)]
        objective = (lr[:, j:j + 1] * _swiglu(Wg, k) * v).sum()
        (delta,) = torch.autograd.grad(objective, Wj, create_graph=True)
        step = delta
        if beta is not None:
            step = beta.mean() * M[j] + delta
            new_M.append(step)
        else:
            new_M.append(M[j])
        if muon_steps:
            step = newton_schulz_reference(step, muon_steps, muon_coeffs).to(delta.dtype)
        w = W[j] + step
        if renorm:
            w = torch.stack([w[i] / (_norm(w[i]) + 1e-5) * init_norms[j][i] for i in range(w.shape[0])])
        new_W.append(w)
    return new_W, new_M


def _norm(row):
    return torch.sqrt((row * row).sum())


def _row_norms(w):
    return [_norm(w[i]) for i in range(w.shape[0])]
