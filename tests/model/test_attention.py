"""Blockwise sliding-window attention vs the full-mask reference: outputs and gradients, float64."""
import pytest
import torch

from lactron.model.attention import window_attention, window_attention_reference

SHAPES = [  # (b, h, s, hd, window)
    (2, 3, 37, 8, 5),     # s not a multiple of the window
    (1, 2, 64, 4, 16),    # exact multiple
    (2, 1, 10, 4, 1),     # window 1: a token sees only itself
    (1, 1, 9, 4, 9),      # window == s: single-block path
    (1, 2, 9, 4, 20),     # window > s
]


@pytest.mark.parametrize("b,h,s,hd,w", SHAPES, ids=[f"b{b}h{h}s{s}d{hd}w{w}" for b, h, s, hd, w in SHAPES])
@pytest.mark.parametrize("docs", [False, True], ids=["nodocs", "docs"])
def test_matches_reference(b, h, s, hd, w, docs):
    g = torch.Generator().manual_seed(s * 31 + w)
    q, k, v = (torch.randn(b, h, s, hd, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    doc = torch.sort(torch.randint(0, 4, (b, s), generator=g), dim=1).values if docs else None
    o1 = window_attention(q, k, v, window=w, doc_ids=doc)
    o2 = window_attention_reference(q, k, v, window=w, doc_ids=doc)
    dout = torch.randn(o1.shape, dtype=torch.float64, generator=g)
    g1 = torch.autograd.grad(o1, (q, k, v), dout)
    g2 = torch.autograd.grad(o2, (q, k, v), dout)
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)  # same math, different tiling
    for name, a, r in zip("qkv", g1, g2):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=lambda m: f"grad {name}: {m}")


def test_window_and_documents_are_respected():
    """Changing a key outside the window, or in another document, leaves the output unchanged."""
    torch.manual_seed(0)
    s, w = 20, 4
    q, k, v = (torch.randn(1, 1, s, 8) for _ in range(3))
    doc = torch.tensor([[0] * 10 + [1] * 10])
    base = window_attention(q, k, v, window=w, doc_ids=doc)
    k2, v2 = k.clone(), v.clone()
    k2[..., 12, :] += 5.0
    v2[..., 12, :] += 5.0  # position 12 is seen by queries 12..15 only
    out = window_attention(q, k2, v2, window=w, doc_ids=doc)
    changed = (out - base).abs().amax(dim=-1)[0, 0] > 0
    assert changed.nonzero().flatten().tolist() == [12, 13, 14, 15]
    k3, v3 = k.clone(), v.clone()
    k3[..., 9, :] += 5.0
    v3[..., 9, :] += 5.0  # last token of doc 0: doc 1 (positions 10..) must not see it
    out = window_attention(q, k3, v3, window=w, doc_ids=doc)
    assert torch.equal(out[..., 10:, :], base[..., 10:, :])
