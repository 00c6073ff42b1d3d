"""lact_op.lact_chunked (batched, hand-derived gradients) against lact_reference (per-head loops, autograd inner
gradients), fla tests/ops style: random upstream gradient, then the output and the gradient of every input compared
one by one by name.

Tolerances (error metrics below):
- fast fp64 vs reference fp64: max-relative <= 1e-9 (observed <= 1.5e-11 over 20 seeds x 64 option sets).
- fast fp32 vs reference fp64, RMS ratio: without Muon <= 1e-5 (observed <= 9e-7); with Muon o <= 1e-4 (observed
  <= 1.4e-5) and gradients <= 3e-2 (observed <= 8.3e-3). Newton-Schulz's derivative is steep at small singular
  values (5 steps of slope up to ~4 each), so the fp32 rounding of a rank-deficient step (e.g. a 1-token document
  piece gives a rank-1 Δ) is amplified ~1000x in the backward; the fp64 comparison is the tight one.
- fp64 fast vs fast (document alone vs in a pack): <= 1e-12; streamed vs one-shot: <= 1e-10 (a chunk split across
  calls is concatenated, which changes GEMM shapes and so rounding: observed <= 1.6e-12).
- checkpoint_chunks and the no-leak test: bitwise (torch.equal).

Inputs are fresh each run; each test seeds its generator from LACTRON_TEST_SEED (random if unset, printed on
failure) and its test id.
"""
import os
import random
import zlib
from dataclasses import dataclass

import pytest
import torch

from lactron.model.fast_weights import inner_grads, lact_chunked, lact_reference

BASE_SEED = int(os.environ.get("LACTRON_TEST_SEED", random.randrange(2**31)))
REPRO = f"rerun with LACTRON_TEST_SEED={BASE_SEED}"
INPUTS = ("q", "k", "v", "lr", "beta", "w0", "w1", "w2")


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed((BASE_SEED ^ zlib.crc32(request.node.nodeid.encode())) % 2**31)


def max_rel(ref, out):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def rms_ratio(ref, out):
    return ((out - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()


def make_inputs(gen, b, nh, s, d, dh, momentum=True):
    """float64 inputs shaped like the module feeds them: unit-norm q, k; lr in (0, 1) (large, so updates matter)."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, k = randn(b, nh, s, d), randn(b, nh, s, d)
    return dict(q=q / q.norm(dim=-1, keepdim=True), k=k / k.norm(dim=-1, keepdim=True), v=randn(b, nh, s, d),
                lr=torch.rand(b, nh, s, 3, generator=gen, dtype=torch.float64),
                beta=torch.rand(b, nh, s, generator=gen, dtype=torch.float64) if momentum else None,
                w0=randn(nh, dh, d) / d**0.5, w1=randn(nh, d, dh) / dh**0.5, w2=randn(nh, dh, d) / d**0.5)


def run(fn, inputs, grad_out, dtype, **kw):
    """Forward + backward of fn in `dtype`; returns {"o": o, name: d(o·grad_out)/d(name)} in float64."""
    leaves = {n: t.detach().to(dtype).clone().requires_grad_() for n, t in inputs.items() if t is not None}
    o = fn(*(leaves[n] for n in ("q", "k", "v", "lr", "w0", "w1", "w2")), beta=leaves.get("beta"), **kw)
    o.backward(grad_out.to(o.dtype))
    grads = {n: torch.zeros_like(t) if t.grad is None else t.grad for n, t in leaves.items()}
    return {"o": o.detach().double(), **{n: g.double() for n, g in grads.items()}}


def packed_docs(b, s, C):
    """Document patterns exercising every boundary case on the grid of chunk C (for s=13, C=4, b=2):
    row 0 [0 0 0 0 | 0 0 1 1 | 2 3 3 3 | 3]: a document that carries state (and momentum) into a chunk and ends
    mid-chunk, a boundary exactly on a chunk start (8), a one-token document, two documents in one chunk;
    row 1 [5 5 5 5 | 6 7 7 8 | 8 8 8 8 | 8]: boundary on a chunk start, three documents in one chunk, a one-token
    document. Other shapes get boundaries at s//3 and s//2 (row 0) and C (row 1) where they fit."""
    if (s, C) == (13, 4):
        rows = [[0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3], [5, 5, 5, 5, 6, 7, 7, 8, 8, 8, 8, 8, 8]]
    else:
        pos = torch.arange(s)
        rows = [((pos >= s // 3).long() + (pos >= s // 2).long()).tolist(), (pos >= C).long().tolist()]
    return torch.tensor(rows[:b])


@dataclass
class Case:
    b: int = 2
    nh: int = 3
    s: int = 13
    d: int = 4
    r: int = 2  # inter_multi
    C: int = 4
    opt: str = "momentum+muon"
    order: str = "causal"
    docs: bool = False
    renorm: bool = True

    @property
    def id(self):
        return (f"b{self.b}-nh{self.nh}-s{self.s}-d{self.d}-r{self.r}-C{self.C}-{self.opt}-{self.order}"
                f"-{'packed' if self.docs else 'nodocs'}{'' if self.renorm else '-norenorm'}")

    def setup(self, gen):
        inputs = make_inputs(gen, self.b, self.nh, self.s, self.d, self.d * self.r, "momentum" in self.opt)
        kw = dict(chunk_size=self.C, muon_steps=5 if "muon" in self.opt else 0, order=self.order,
                  renorm=self.renorm, doc_ids=packed_docs(self.b, self.s, self.C) if self.docs else None)
        return inputs, torch.randn(self.b, self.nh, self.s, self.d, generator=gen, dtype=torch.float64), kw


OPTS = ["gd", "momentum", "muon", "momentum+muon"]
CASES = (
    [Case(opt=o, order=od, docs=dc) for o in OPTS for od in ("causal", "bidirectional") for dc in (False, True)]
    + [Case(docs=True, renorm=False), Case(opt="gd", order="bidirectional", renorm=False)]
    + [Case(b=1, nh=1, s=7, d=4, r=1, C=3),  # s not a multiple of the chunk
       Case(b=2, nh=2, s=3, d=8, r=1, C=5, docs=True),  # s < chunk
       Case(b=1, nh=3, s=5, d=4, r=2, C=1, docs=True),  # chunk == 1
       Case(b=2, nh=1, s=8, d=8, r=2, C=8),  # s == chunk
       Case(b=2, nh=2, s=10, d=16, r=1, C=4),
       Case(b=1, nh=1, s=7, d=4, r=1, C=3, order="bidirectional", docs=True),
       Case(b=2, nh=2, s=3, d=8, r=1, C=5, order="bidirectional"),
       Case(b=1, nh=2, s=6, d=4, r=1, C=1, order="bidirectional", docs=True)]
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fast_matches_reference_fp64(case, gen):
    inputs, grad_out, kw = case.setup(gen)
    ref = run(lact_reference, inputs, grad_out, torch.float64, **kw)
    fast = run(lact_chunked, inputs, grad_out, torch.float64, **kw)
    # A causal sequence of one chunk never updates: only then may the update inputs get no gradient at all.
    # With a single update per sequence, momentum multiplies M = 0, so beta gets none either.
    inert = set()
    if case.s <= case.C:
        inert = {"k", "v", "lr", "beta"} if case.order == "causal" else {"beta"}
    for name in ["o", *(n for n in INPUTS if n in ref)]:
        if name in inert:
            assert ref[name].abs().max() == 0 and fast[name].abs().max() == 0, f"{name} should get no gradient"
            continue
        assert ref[name].abs().max() > 0, f"reference {name} is all zero: the comparison would be vacuous"
        err = max_rel(ref[name], fast[name])
        assert err <= 1e-9, f"{name}: max-relative error {err:.2e} > 1e-9 ({REPRO})"


FP32_CASES = [Case(opt=o, order=od, docs=True) for o in OPTS for od in ("causal", "bidirectional")] + [
    Case(b=2, nh=2, s=10, d=16, r=1, C=4)]


@pytest.mark.parametrize("case", FP32_CASES, ids=lambda c: c.id)
def test_fast_fp32_matches_reference_fp64(case, gen):
    inputs, grad_out, kw = case.setup(gen)
    ref = run(lact_reference, inputs, grad_out, torch.float64, **kw)
    fast = run(lact_chunked, inputs, grad_out, torch.float32, **kw)
    muon = "muon" in case.opt
    for name in ["o", *(n for n in INPUTS if n in ref)]:
        tol = (1e-4 if name == "o" else 3e-2) if muon else 1e-5
        err = rms_ratio(ref[name], fast[name])
        assert err <= tol, f"{name}: RMS error ratio {err:.2e} > {tol:.0e} ({REPRO})"


def test_hand_derived_chunk_gradient_equals_autograd(gen):
    B, n, d, dh = 3, 5, 4, 8
    w0, w2 = (torch.randn(B, dh, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w1 = torch.randn(B, d, dh, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(B, n, d, generator=gen, dtype=torch.float64), torch.randn(B, n, d, generator=gen,
                                                                                 dtype=torch.float64)
    lr = torch.rand(B, n, 3, generator=gen, dtype=torch.float64)
    deltas = inner_grads(w0, w1, w2, k, v, lr)
    for j, (name, w) in enumerate(zip(("w0", "w1", "w2"), (w0, w1, w2))):
        f = torch.bmm(w1, torch.nn.functional.silu(torch.bmm(w0, k.mT)) * torch.bmm(w2, k.mT)).mT  # [B, n, d]
        (g,) = torch.autograd.grad((lr[..., j:j + 1] * f * v).sum(), w)  # Δ moves W up the dot product
        torch.testing.assert_close(deltas[j], g, rtol=1e-12, atol=1e-12, msg=lambda m: f"Δ{name}: {m}")


@pytest.mark.parametrize("order", ["causal", "bidirectional"])
def test_checkpoint_chunks_is_identical(order, gen):
    inputs, grad_out, kw = Case(order=order, docs=True).setup(gen)
    plain = run(lact_chunked, inputs, grad_out, torch.float32, **kw)
    ckpt = run(lact_chunked, inputs, grad_out, torch.float32, checkpoint_chunks=True, **kw)
    for name in plain:
        assert torch.equal(plain[name], ckpt[name]), f"{name} differs with checkpoint_chunks=True"


@pytest.mark.parametrize("order", ["causal", "bidirectional"])
def test_documents_do_not_leak(order, gen):
    """Changing every other document's tokens leaves a document's outputs bitwise unchanged, and no gradient of
    its outputs reaches another document's tokens."""
    case = Case(order=order, docs=True)
    inputs, _, kw = case.setup(gen)
    docs = kw["doc_ids"]
    base = lact_chunked(**{n: inputs[n] for n in INPUTS}, **kw)
    for row in range(case.b):
        for doc in docs[row].unique().tolist():
            mine = docs == doc  # [b, s]; other rows never share a document id here
            other = ~mine
            noisy = {n: t.clone() for n, t in inputs.items()}
            for n in ("q", "k", "v", "lr", "beta"):
                noise = torch.rand if n in ("lr", "beta") else torch.randn
                fresh = noise(noisy[n].shape, generator=gen, dtype=torch.float64)
                m = other[:, None, :].expand(noisy[n].shape[:3])
                noisy[n][m] = fresh[m]
            noisy = {n: t.requires_grad_() for n, t in noisy.items()}
            out = lact_chunked(**noisy, **kw)
            sel = mine[:, None, :, None].expand_as(out)
            assert torch.equal(out[sel], base[sel]), f"row {row} doc {doc}: outputs changed with other documents"
            out[sel].sum().backward()
            for n in ("q", "k", "v", "lr", "beta"):
                m = other[:, None, :].expand(noisy[n].shape[:3])
                assert noisy[n].grad[m].abs().max() == 0, f"row {row} doc {doc}: gradient leaked into {n}"


@pytest.mark.parametrize("order", ["causal", "bidirectional"])
def test_document_alone_equals_document_in_pack(order, gen):
    """Pack [0]*5 + [1]*7 + [2]*9 with C=4: documents 0 and 2 start on the grid, so running them alone (no doc_ids
    at all) must reproduce them; document 1 starts at 5, so alone it needs its grid offset (a 1-token prefix)."""
    C, lens = 4, (5, 7, 9)
    s = sum(lens)
    inputs = make_inputs(gen, 1, 2, s, 4, 8)
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))[None]
    kw = dict(chunk_size=C, muon_steps=5, order=order)
    packed = lact_chunked(**{n: inputs[n] for n in INPUTS}, doc_ids=docs, **kw)

    def alone(a, e, pad=0):
        sl = {n: inputs[n][:, :, a - pad:e] for n in ("q", "k", "v", "lr", "beta")}
        ids = None if pad == 0 else torch.tensor([[0] * pad + [1] * (e - a)])
        return lact_chunked(**sl, **{n: inputs[n] for n in ("w0", "w1", "w2")}, doc_ids=ids, **kw)[:, :, pad:]

    for doc, (a, e, pad) in enumerate([(0, 5, 0), (5, 12, 1), (12, 21, 0)]):
        err = max_rel(packed[:, :, a:e], alone(a, e, pad))
        assert err <= 1e-12, f"document {doc}: alone vs packed max-relative error {err:.2e} ({REPRO})"


def test_stats_keys_finite_and_free(gen):
    inputs, _, kw = Case(docs=True).setup(gen)
    args = {n: inputs[n] for n in INPUTS}
    stats = {}
    o_stats = lact_chunked(**args, stats=stats, **kw)
    assert torch.equal(o_stats, lact_chunked(**args, **kw)), "passing stats changed the output"
    for kind in ("update_norm", "lr_mean", "lr_std", "state_norm"):
        for w in ("w0", "w1", "w2"):
            key = f"{kind}/{w}"
            assert key in stats and isinstance(stats[key], float), f"missing stat {key}"
            assert torch.isfinite(torch.tensor(stats[key])), f"{key} = {stats[key]}"
            assert stats[key] > 0, f"{key} = {stats[key]} (every stat is positive for these inputs)"
    assert abs(stats["lr_mean/w1"] - inputs["lr"][..., 1].mean().item()) < 1e-12


SPLITS = {"mid-chunk": [6], "on-chunk-start": [4, 8], "token-by-token": [5, 6, 7, 8, 9, 10], "first-token": [1]}


@pytest.mark.parametrize("docs", [False, True], ids=["nodocs", "packed"])
@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_streaming_state_equals_one_shot(split, docs, gen):
    """Calling segment by segment with return_state/initial_state equals one call (outputs and gradients)."""
    case = Case(docs=docs)
    inputs, grad_out, kw = case.setup(gen)
    one_shot = run(lact_chunked, inputs, grad_out, torch.float64, **kw)

    def streamed(q, k, v, lr, w0, w1, w2, beta, doc_ids, **kw):
        outs, state, cuts = [], None, [0, *SPLITS[split], case.s]
        for a, e in zip(cuts[:-1], cuts[1:]):
            o, state = lact_chunked(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], lr[:, :, a:e], w0, w1, w2,
                                    beta=beta[:, :, a:e], doc_ids=None if doc_ids is None else doc_ids[:, a:e],
                                    initial_state=state, return_state=True, **kw)
            assert state.k.shape[2] == e % case.C, "the pending tokens are those of the unfinished chunk"
            outs.append(o)
        return torch.cat(outs, 2)

    stream = run(streamed, inputs, grad_out, torch.float64, **kw)
    for name in one_shot:
        err = max_rel(one_shot[name], stream[name])
        assert err <= 1e-10, f"{name}: streamed vs one-shot max-relative error {err:.2e} ({REPRO})"


def test_matmul_dtype_bf16_stays_close(gen):
    inputs, _, kw = Case(opt="momentum", docs=True).setup(gen)
    args = {n: inputs[n].float() for n in INPUTS}
    o32 = lact_chunked(**args, **kw)
    o16 = lact_chunked(**args, **kw, matmul_dtype=torch.bfloat16)
    assert o16.dtype == torch.float32
    err = rms_ratio(o32.double(), o16.double())
    assert 0 < err <= 2e-2, f"bf16 matmuls: RMS error ratio {err:.2e} (observed <= 6.4e-3) ({REPRO})"


def test_bad_inputs_raise(gen):
    inputs, _, kw = Case(docs=True).setup(gen)
    args = {n: inputs[n] for n in INPUTS}
    with pytest.raises(ValueError, match="non-decreasing"):
        lact_chunked(**args, **{**kw, "doc_ids": kw["doc_ids"].flip(1)})
    with pytest.raises(ValueError, match="lr must be"):
        lact_chunked(**{**args, "lr": args["lr"][..., :2]}, **kw)
    with pytest.raises(ValueError, match="whole chunks"):
        lact_chunked(**args, **{**kw, "order": "bidirectional"}, return_state=True)
    with pytest.raises(NotImplementedError):
        lact_reference(**args, **kw, return_state=True)
