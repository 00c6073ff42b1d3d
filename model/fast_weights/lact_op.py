"""The LaCT fast-weight operator, chunked and batched (paper §3, Alg. 1; research/lact.md §1.3-§1.5).

Per head, the fast weights are a bias-free SwiGLU  f_W(x) = W1 [SiLU(W0 x) ⊙ (W2 x)]  with w0 = gate [dh, d],
w2 = up [dh, d], w1 = down [d, dh] (the paper's W1, W3, W2; Eq. 6). The weights passed in are the *learned initial*
fast weights [nh, ...]; every batch row evolves its own copy along the sequence, flattened to a bmm batch of b*nh.

One update on a chunk of tokens (keys k_i, values v_i, learning rates η_i = (η0, η1, η2) per token):
  inner loss  L = -Σ_i η_i f_W(k_i)ᵀ v_i                                (negative dot product, Eq. 7)
  with g = W0 k, u = W2 k, h = SiLU(g) ⊙ u, dh = W1ᵀ v (hand-derived; no autograd inside):
  ΔW1 = Σ_i η1_i v_i h_iᵀ
  ΔW2 = Σ_i η2_i (dh_i ⊙ SiLU(g_i)) k_iᵀ
  ΔW0 = Σ_i η0_i (dh_i ⊙ u_i ⊙ SiLU'(g_i)) k_iᵀ,   SiLU'(x) = σ(x)(1 + x(1 - σ(x)))
  (sums, not means), then in this order (Tab. 3):
  momentum   M <- β̄ M + Δ, β̄ = mean β over the chunk's updating tokens, M starts at 0; the step is M (else Δ)
  Muon       step <- NewtonSchulz(step), each matrix separately
  W <- W + step
  renorm     every output row of every matrix (norm over the input dim = last dim as stored) is rescaled to the
             norm of that row in the initial weights: W <- W / (||W_row|| + 1e-5) * ||W_init_row||; the initial
             norms stay in the autograd graph, as in the LM code.

Orders. `causal` (LM, "shifted block-causal", apply-then-update): chunks lie on the global grid [0,C), [C,2C), ...;
chunk c is read with the weights after chunks < c, then updates them; the last chunk is apply-only (its update would
be seen by nobody), except that `return_state=True` also applies the update of a final chunk that is complete, so a
later call can continue. `bidirectional` (NVS, update-then-apply): every chunk first updates, then is read with the
new weights.

Document boundaries (packed sequences). The official code leaks fast-weight state across packed documents; we do
not. The chunk grid stays global, and the carried state belongs to one document: the last document of the chunk that
produced it. A token reads the carried state only if it belongs to that document; a token of any other document reads
its document's start state (the initial weights, momentum 0). In a chunk that contains a boundary, that means tokens
after the boundary read the initial weights. The update at the end of a causal chunk uses only the tokens of the
chunk's LAST document (the others get lr and β weight 0), starting from the carried state if that document is the
carried one, else from the initial weights with M = 0. Bidirectional: the tokens of each document in a chunk read
the state updated by their own document's tokens of that chunk (implemented exactly: one masked update per document
present, only in chunks that contain a boundary). Equivalently: a document's outputs do not depend on any other
document's tokens, and equal running that document alone from the initial state with the chunk grid aligned the same
way. Chunks without a boundary run at full speed; a chunk with one pays one extra masked apply (causal) or one
update+apply per document in it (bidirectional). Deciding which chunks those are costs one small device->host copy.

Streaming (prefill/decode): `return_state=True` returns a `LaCTState` (weights, momentum, the document they belong
to, and the tokens of the unfinished chunk, held until it completes); passing it as `initial_state` to the next call
continues exactly as one call over the concatenated sequence would. The reset/renorm reference is always the
w0/w1/w2 passed to the call (the learned initial weights), so the state does not duplicate them.

Precision: state math runs in float32 at least (float64 stays float64); `matmul_dtype` (e.g. bf16 on GPU) casts the
bmm operands only, like the official code does.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .muon import Coeffs, newton_schulz

RENORM_EPS = 1e-5
Order = Literal["causal", "bidirectional"]
Weights = tuple  # (w0 [B, dh, d], w1 [B, d, dh], w2 [B, dh, d]), B = b * nh


@dataclass
class LaCTState:
    """Per-batch-row fast-weight state between calls (causal streaming).

    w0, w2: [b, nh, dh, d]; w1: [b, nh, d, dh]; m0, m1, m2: same shapes or None (no momentum), compute dtype.
    doc: [b] int64, the document the weights and momentum belong to (a stream run with doc_ids=None is document 0;
    a later call with doc_ids=None continues the latest document).
    k, v: [b, nh, P, d]; lr: [b, nh, P, 3]; beta: [b, nh, P] or None; doc_ids: [b, P]: the P < chunk_size tokens
    of the chunk that is not complete yet (already read by their queries, not yet used for an update).
    """

    w0: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    m0: torch.Tensor | None
    m1: torch.Tensor | None
    m2: torch.Tensor | None
    doc: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor
    beta: torch.Tensor | None
    doc_ids: torch.Tensor


def lact_chunked(q, k, v, lr, w0, w1, w2, *, chunk_size: int, beta=None, muon_steps: int = 0,
                 muon_coeffs: Coeffs = "lm", renorm: bool = True, order: Order = "causal", doc_ids=None,
                 checkpoint_chunks: bool = False, initial_state: LaCTState | None = None,
                 return_state: bool = False, stats: dict | None = None, matmul_dtype: torch.dtype | None = None):
    """Run the fast-weight net over a sequence; see the module docstring for the semantics.

    q, k, v: [b, nh, s, d]; lr: [b, nh, s, 3] (η for w0, w1, w2); beta: [b, nh, s] in (0, 1) or None;
    w0, w2: [nh, dh, d]; w1: [nh, d, dh]; doc_ids: [b, s] int, non-decreasing per row, or None (one document).
    Returns o [b, nh, s, d] in q's dtype, or (o, LaCTState) with return_state=True.
    """
    b, nh, s, d = q.shape
    _check(q, k, v, lr, beta, w0, w1, w2, doc_ids, chunk_size, order)
    ct = torch.promote_types(torch.promote_types(q.dtype, w0.dtype), torch.float32)
    B, C = b * nh, chunk_size

    def flat(t):  # [b, nh, s, ...] -> [B, s, ...] in the compute dtype
        return None if t is None else t.reshape(B, *t.shape[2:]).to(ct)

    qf = flat(q)
    seq = dict(k=flat(k), v=flat(v), lr=flat(lr), beta=flat(beta))  # the update inputs, [B, L, ...]
    w_init = tuple(w.to(ct).repeat(b, 1, 1) for w in (w0, w1, w2))  # row b_i*nh + h, like flat()
    norms = tuple(w.norm(dim=-1, keepdim=True) for w in w_init) if renorm else None
    W, M, P = w_init, None, 0
    carried0 = None if doc_ids is None else doc_ids[:, 0]  # the initial weights start the first document
    if initial_state is not None:
        W, M, P, seq, doc_ids, carried0 = _resume(initial_state, flat, seq, beta, doc_ids, C, order)
    L = P + s  # the "extended" sequence: P pending tokens (keys only) + s new tokens
    if return_state and order == "bidirectional" and L % C:
        raise ValueError(f"bidirectional return_state needs whole chunks, got {L} tokens for chunk_size={C}")

    plan = _chunk_plan(doc_ids, carried0, C, L)
    doc_B = None if doc_ids is None else doc_ids.repeat_interleave(nh, 0)  # [B, L]
    carried_B = None if carried0 is None else carried0.repeat_interleave(nh, 0)
    step_fn = _causal_chunk if order == "causal" else _bidirectional_chunk
    step_fn = functools.partial(step_fn, w_init=w_init, norms=norms, muon_steps=muon_steps,
                                muon_coeffs=muon_coeffs, mm=matmul_dtype, want_stats=stats is not None)
    use_ckpt = checkpoint_chunks and torch.is_grad_enabled()

    outs, step_norms, last_update_end = [], [], 0
    for t0, t1, dirty, n_docs in plan:
        q0 = max(t0, P)  # pending tokens have no queries
        update = order == "bidirectional" or t1 < L or (return_state and t1 - t0 == C)
        masks = None
        if dirty:
            carried = carried_B if t0 == 0 else doc_B[:, t0 - 1]
            masks = _doc_masks(doc_B[:, t0:t1], carried, q0 - t0, n_docs, order)
        args = (W, M, qf[:, q0 - P:t1 - P], *(None if t is None else t[:, t0:t1] for t in seq.values()),
                masks, update)
        o_c, W, M, norms_c = checkpoint(step_fn, *args, use_reentrant=False) if use_ckpt else step_fn(*args)
        outs.append(o_c)
        if update:
            last_update_end = t1
            if norms_c is not None:
                step_norms.append(norms_c)

    o = torch.cat(outs, 1).reshape(b, nh, s, d).to(q.dtype)
    if stats is not None:
        _fill_stats(stats, step_norms, lr, W)
    if not return_state:
        return o
    return o, _final_state(W, M, seq, doc_ids, carried0, last_update_end, b, nh)


def _resume(st: LaCTState, flat, seq, beta, doc_ids, C, order):
    """Continue from `st`: its pending tokens go in front of the update inputs (they have no queries)."""
    b, P = st.doc.shape[0], st.k.shape[2]
    if P >= C or (order == "bidirectional" and P):
        raise ValueError(f"initial_state holds {P} pending tokens; incompatible with chunk_size={C}, {order}")
    if P and (st.beta is None) != (beta is None):
        raise ValueError("initial_state and this call disagree on momentum (beta given in one, not the other)")
    W = tuple(flat(t) for t in (st.w0, st.w1, st.w2))
    M = None if beta is None or st.m0 is None else tuple(flat(t) for t in (st.m0, st.m1, st.m2))
    seq = {n: None if t is None else torch.cat([flat(getattr(st, n)), t], 1) for n, t in seq.items()}
    if doc_ids is None:  # the new tokens continue the latest document seen
        latest = st.doc_ids[:, -1] if P else st.doc
        doc_ids = latest[:, None].expand(b, seq["k"].shape[1] - P)
    doc_ids = torch.cat([st.doc_ids.to(doc_ids), doc_ids], 1)
    return W, M, P, seq, doc_ids, st.doc.to(doc_ids)


def _final_state(W, M, seq, doc_ids, carried0, e, b, nh):
    """The state after the last update (which ended at extended position e); tokens after e are pending."""
    def unflat(t):
        return None if t is None else t.reshape(b, nh, *t.shape[1:])
    L = seq["k"].shape[1]
    if doc_ids is None:  # no documents given anywhere: everything is document 0
        doc = torch.zeros(b, dtype=torch.long, device=seq["k"].device)
        pending_docs = doc[:, None].expand(b, L - e)
    else:
        doc = doc_ids[:, e - 1] if e else carried0
        pending_docs = doc_ids[:, e:]
    Ms = (None,) * 3 if M is None else tuple(unflat(m) for m in M)
    return LaCTState(*(unflat(w) for w in W), *Ms, doc=doc, doc_ids=pending_docs,
                     **{n: None if t is None else unflat(t[:, e:]) for n, t in seq.items()})


# ---------------------------------------------------------------------------------------------------------------
# One chunk. Each returns (o_c [B, n_q, d], W, M, step norms [3] or None) so it can sit under torch.utils.checkpoint.

def _causal_chunk(W, M, q, k, v, lr, beta, masks, update, *, w_init, norms, muon_steps, muon_coeffs, mm,
                  want_stats):
    """Apply-then-update. masks = None (no boundary) or (fresh [B,1,1], reads_start [B,nq,1], upd [B,nk]).

    `start` is the state the update starts from: the carried one, or the initial one for rows whose last document
    is not the carried one (`fresh`). A query reads `start` iff (its doc is the carried doc) == (not fresh).
    """
    W_s, M_s = W, M
    if masks is not None:
        fresh, reads_start, upd = masks
        W_s = tuple(torch.where(fresh, wi, w) for wi, w in zip(w_init, W))
        M_s = None if M is None else tuple(torch.where(fresh, 0.0, m) for m in M)
        lr = lr * upd[..., None]
    if update:
        o, delta = _forward_and_grads(W_s, q, k, v, lr, mm)
    else:
        o = _apply(W_s, q, mm)
    if masks is not None:  # the one extra apply a boundary chunk pays: the other state
        W_o = tuple(torch.where(fresh, w, wi) for wi, w in zip(w_init, W))
        o = torch.where(reads_start, o, _apply(W_o, q, mm))
    if not update:
        return o, W, M, None
    bbar = None if beta is None else _mean(beta, None if masks is None else masks[2])
    W, M, step = _update(W_s, M_s, delta, bbar, norms, muon_steps, muon_coeffs, mm)
    return o, W, M, _norms(step) if want_stats else None


def _bidirectional_chunk(W, M, q, k, v, lr, beta, masks, update, *, w_init, norms, muon_steps, muon_coeffs, mm,
                         want_stats):
    """Update-then-apply. masks = None or a list of (fresh [B,1,1], doc_mask [B,n]), one per document slot."""
    if masks is None:
        bbar = None if beta is None else _mean(beta, None)
        W, M, step = _update(W, M, _inner_grads(W, k, v, lr, mm), bbar, norms, muon_steps, muon_coeffs, mm)
        return _apply(W, q, mm), W, M, _norms(step) if want_stats else None
    o, steps = None, []
    for fresh, mask in masks:  # each document in the chunk updates from its own start state
        W_s = tuple(torch.where(fresh, wi, w) for wi, w in zip(w_init, W))
        M_s = None if M is None else tuple(torch.where(fresh, 0.0, m) for m in M)
        bbar = None if beta is None else _mean(beta, mask)
        delta = _inner_grads(W_s, k, v, lr * mask[..., None], mm)
        W_j, M_j, step = _update(W_s, M_s, delta, bbar, norms, muon_steps, muon_coeffs, mm)
        o_j = _apply(W_j, q, mm)
        o = o_j if o is None else torch.where(mask[..., None], o_j, o)
        steps.append(step)
    # The last slot is every row's last document: its state is the one carried on.
    step_norms = torch.stack([_norms(st) for st in steps]).mean(0) if want_stats else None
    return o, W_j, M_j, step_norms


# ---------------------------------------------------------------------------------------------------------------
# The math. B = b * nh; W = (w0 [B, dh, d], w1 [B, d, dh], w2 [B, dh, d]).

def _bmm(a, b, mm):
    if mm is None:
        return torch.bmm(a, b)
    return torch.bmm(a.to(mm), b.to(mm)).to(a.dtype)


def _apply(W, x, mm):
    """f_W(x) for x [B, n, d] -> [B, n, d]; w0 and w2 share one GEMM."""
    w0, w1, w2 = W
    g, u = _bmm(x, torch.cat([w0, w2], 1).mT, mm).split(w0.shape[1], -1)
    return _bmm(F.silu(g) * u, w1.mT, mm)


def inner_grads(w0, w1, w2, k, v, lr, matmul_dtype=None):
    """The chunk update Δ = -∂L/∂W of L = -Σ_i η_i f_W(k_i)ᵀ v_i, hand-derived (module docstring).

    w0, w2: [B, dh, d]; w1: [B, d, dh]; k, v: [B, n, d]; lr: [B, n, 3]. Returns (Δ0, Δ1, Δ2) shaped like W.
    """
    return _inner_grads((w0, w1, w2), k, v, lr, matmul_dtype)


def _inner_grads(W, k, v, lr, mm):
    return _forward_and_grads(W, None, k, v, lr, mm)[1]


def _forward_and_grads(W, q, k, v, lr, mm):
    """(f_W(q), Δ from keys k) sharing one GEMM for W0/W2 on [q; k] (causal: both read the same W)."""
    w0, w1, w2 = W
    dh = w0.shape[1]
    nq = 0 if q is None else q.shape[1]
    x = k if q is None else torch.cat([q, k], 1)
    g, u = _bmm(x, torch.cat([w0, w2], 1).mT, mm).split(dh, -1)  # [B, nq + nk, dh] each
    sg = torch.sigmoid(g)
    silu = g * sg
    o = _bmm(silu[:, :nq] * u[:, :nq], w1.mT, mm) if nq else None
    g, u, sg, silu = g[:, nq:], u[:, nq:], sg[:, nq:], silu[:, nq:]
    dhid = _bmm(v, w1, mm)  # rows of (W1ᵀ v)ᵀ: [B, nk, dh]
    a0 = dhid * u * sg * (1 + g * (1 - sg))  # through the gate's SiLU
    a2 = dhid * silu
    d02 = _bmm(torch.cat([a0 * lr[..., 0:1], a2 * lr[..., 2:3]], -1).mT, k, mm)  # [B, 2dh, d]
    d1 = _bmm(v.mT, silu * u * lr[..., 1:2], mm)  # [B, d, dh]
    d0, d2 = d02.split(dh, 1)
    return o, (d0, d1, d2)


def _update(W, M, delta, bbar, norms, muon_steps, muon_coeffs, mm):
    """Momentum -> Muon -> add -> renorm (the order of paper Tab. 3). Returns (W, M, step)."""
    step = delta
    if bbar is not None:
        M = delta if M is None else tuple(bbar * m + dl for m, dl in zip(M, delta))  # M starts at 0
        step = M
    if muon_steps:
        # w1ᵀ has w0's shape and NS(Xᵀ) = NS(X)ᵀ, so all three matrices go through one batched call.
        B = step[0].shape[0]
        ns = newton_schulz(torch.cat([step[0], step[1].mT, step[2]]), muon_steps, muon_coeffs, dtype=mm)
        step = (ns[:B], ns[B:2 * B].mT, ns[2 * B:])
    W = tuple(w + st for w, st in zip(W, step))
    if norms is not None:
        W = tuple(w / (w.norm(dim=-1, keepdim=True) + RENORM_EPS) * n for w, n in zip(W, norms))
    return W, M, step


def _mean(beta, mask):
    """β̄ [B, 1, 1]: mean of beta [B, n] over the updating tokens."""
    if mask is None:
        return beta.mean(1)[:, None, None]
    return ((beta * mask).sum(1) / mask.sum(1))[:, None, None]


def _norms(step):
    return torch.stack([st.detach().norm(dim=(-2, -1)).mean() for st in step])


# ---------------------------------------------------------------------------------------------------------------
# Documents: which chunks contain a boundary (one host sync), and the masks of such a chunk.

def _chunk_plan(doc_ids, carried0, C, L):
    """[(t0, t1, dirty, n_docs)] over the extended sequence; dirty = some row's chunk is not all carried-doc."""
    starts = list(range(0, L, C))
    ends = [min(t + C, L) for t in starts]
    if doc_ids is None:
        return [(t0, t1, False, 1) for t0, t1 in zip(starts, ends)]
    dev = doc_ids.device
    st, en = torch.tensor(starts, device=dev), torch.tensor(ends, device=dev)
    carried = torch.cat([carried0[:, None], doc_ids[:, st[1:] - 1]], 1)  # [b, n_chunks]
    dirty = (doc_ids[:, en - 1] != carried).any(0)
    change = torch.zeros_like(doc_ids)
    change[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).long()
    rank = change.cumsum(1)  # which document of its row a token belongs to
    n_docs = (rank[:, en - 1] - rank[:, st] + 1).amax(0)
    ok = bool((doc_ids[:, 1:] >= doc_ids[:, :-1]).all()) and bool((carried0 <= doc_ids[:, 0]).all())
    if not ok:
        raise ValueError("doc_ids must be non-decreasing along every row (and not below initial_state.doc)")
    flags = torch.stack([dirty.long(), n_docs]).tolist()
    return [(t0, t1, bool(f), int(n)) for t0, t1, f, n in zip(starts, ends, *flags)]


def _doc_masks(doc, carried, q_off, n_docs, order):
    """Masks for one chunk with a boundary; doc: [B, nk] (keys; queries are doc[:, q_off:]), carried: [B]."""
    carried = carried[:, None]
    if order == "causal":
        last = doc[:, -1:]
        fresh = (last != carried)[..., None]  # [B, 1, 1]
        reads_start = ((doc[:, q_off:] == carried) != fresh[:, 0])[..., None]  # [B, nq, 1]
        return fresh, reads_start, doc == last  # bool masks multiply as 0/1
    change = torch.zeros_like(doc)
    change[:, 1:] = (doc[:, 1:] != doc[:, :-1]).long()
    rank = change.cumsum(1)  # 0 for the chunk's first document of each row
    slots = []
    for j in range(n_docs):  # rows with fewer documents repeat their last one (same result, selected twice)
        mask = rank == torch.clamp(rank[:, -1:], max=j)
        slot_doc = doc.gather(1, mask.long().argmax(1, keepdim=True))
        slots.append(((slot_doc != carried)[..., None], mask))
    return slots


def _fill_stats(stats, step_norms, lr, W):
    names = ("w0", "w1", "w2")
    mean_norms = torch.stack(step_norms).mean(0).tolist() if step_norms else [0.0] * 3
    lr_d = lr.detach().to(torch.promote_types(lr.dtype, torch.float32))
    for j, n in enumerate(names):
        stats[f"update_norm/{n}"] = float(mean_norms[j])
        stats[f"lr_mean/{n}"] = lr_d[..., j].mean().item()
        stats[f"lr_std/{n}"] = lr_d[..., j].std(unbiased=False).item()
        stats[f"state_norm/{n}"] = W[j].detach().norm(dim=(-2, -1)).mean().item()


def _check(q, k, v, lr, beta, w0, w1, w2, doc_ids, chunk_size, order):
    b, nh, s, d = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share [b, nh, s, d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if s < 1:
        raise ValueError("empty sequence")
    if lr.shape != (b, nh, s, 3):
        raise ValueError(f"lr must be [b, nh, s, 3] = {(b, nh, s, 3)}, got {tuple(lr.shape)}")
    if beta is not None and beta.shape != (b, nh, s):
        raise ValueError(f"beta must be [b, nh, s] = {(b, nh, s)}, got {tuple(beta.shape)}")
    dh = w0.shape[1]
    if w0.shape != (nh, dh, d) or w2.shape != (nh, dh, d) or w1.shape != (nh, d, dh):
        raise ValueError(f"fast weights must be w0, w2 [nh, dh, d], w1 [nh, d, dh] with nh={nh}, d={d}; got "
                         f"{tuple(w0.shape)}, {tuple(w1.shape)}, {tuple(w2.shape)}")
    if doc_ids is not None and doc_ids.shape != (b, s):
        raise ValueError(f"doc_ids must be [b, s] = {(b, s)}, got {tuple(doc_ids.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if order not in ("causal", "bidirectional"):
        raise ValueError(f"order must be 'causal' or 'bidirectional', got {order!r}")
