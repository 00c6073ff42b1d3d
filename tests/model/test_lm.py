"""The LM as a whole: fast path vs the naive reference (float64, logits and every parameter's gradient), and
packed documents that never see each other."""
import pytest
import torch

from lactron.data.packing import segment_ids
from lactron.model.config import FastWeightConfig, LMConfig
from lactron.model.lm import LaCTLM

EOS = 256


def tiny(impl="fast", **fw):
    fw = {"n_heads": 2, "chunk_size": 8, "momentum": True, "muon": True, **fw, "impl": impl}
    return LMConfig(vocab_size=257, dim=32, n_layers=2, n_heads=4, window=8, rope_theta=1e4,
                    fast_weight=FastWeightConfig(**fw))


def packed_batch(g, b=2, s=29):
    x = torch.randint(0, 256, (b, s + 1), generator=g)
    x[0, 7] = EOS   # doc boundary inside the first chunk
    x[0, 19] = EOS  # and another one mid-sequence
    x[1, 15] = EOS  # the next document starts exactly on a chunk boundary (16)
    return x


@pytest.mark.parametrize("fw", [dict(), dict(muon=False), dict(momentum=False, muon=False, renorm=False)],
                         ids=["muon+momentum", "momentum", "gd-norenorm"])
def test_fast_matches_reference_float64(fw):
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    fast = LaCTLM(tiny("fast", **fw)).double()
    ref = LaCTLM(tiny("reference", **fw)).double()
    ref.load_state_dict(fast.state_dict())
    x = packed_batch(g)
    inp, tgt = x[:, :-1], x[:, 1:]
    doc, pos = segment_ids(inp, EOS)
    lf = fast(inp, tgt, doc_ids=doc, positions=pos)
    lr = ref(inp, tgt, doc_ids=doc, positions=pos)
    torch.testing.assert_close(lf, lr, rtol=1e-10, atol=1e-10)
    lf.backward()
    lr.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-8, atol=1e-10,
                                   msg=lambda m: f"grad of {name}: {m}")


def test_documents_are_isolated():
    """Changing document A's tokens leaves every logit of document B unchanged (attention, fast weights, RoPE)."""
    torch.manual_seed(0)
    m = LaCTLM(tiny()).eval()
    a = torch.randint(0, 256, (1, 11))
    a[0, -1] = EOS
    b = torch.randint(0, 256, (1, 20))
    a2 = torch.randint(0, 256, (1, 11))
    a2[0, -1] = EOS
    outs = []
    for first in (a, a2):
        x = torch.cat([first, b], dim=1)
        doc, pos = segment_ids(x, EOS)
        outs.append(m(x, doc_ids=doc, positions=pos)[0, 11:])
    assert torch.equal(outs[0], outs[1])


def test_grid_aligned_document_alone_equals_packed():
    """A document starting on a chunk boundary gives the same logits packed after another document as alone."""
    torch.manual_seed(0)
    m = LaCTLM(tiny()).double().eval()
    a = torch.randint(0, 256, (1, 16))  # two full chunks of 8
    a[0, -1] = EOS
    b = torch.randint(0, 256, (1, 13))
    x = torch.cat([a, b], dim=1)
    doc, pos = segment_ids(x, EOS)
    packed = m(x, doc_ids=doc, positions=pos)[0, 16:]
    alone = m(b)[0]
    torch.testing.assert_close(packed, alone, rtol=1e-12, atol=1e-12)


def test_padded_vocab_is_never_predicted():
    torch.manual_seed(0)
    m = LaCTLM(tiny())
    assert m.lm_head.weight.shape[0] == 384  # 257 padded to a multiple of 128
    logits = m(torch.randint(0, 256, (1, 5)))
    assert torch.isinf(logits[..., 257:]).all() and torch.isfinite(logits[..., :257]).all()


def test_window_only_baseline_builds():
    cfg = LMConfig(vocab_size=257, dim=32, n_layers=1, n_heads=4, window=8,
                   fast_weight=FastWeightConfig(rule="none"))
    m = LaCTLM(cfg)
    assert all(blk.mixer.fw is None for blk in m.blocks)
    assert m(torch.randint(0, 256, (1, 9)), torch.randint(0, 256, (1, 9))).ndim == 0
