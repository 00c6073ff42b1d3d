import pytest
import torch

from lactron.data.packing import segment_ids

EOS = 256


def reference(row, eos):
    """Loop version of the convention: a document starts at t iff row[t-1] == eos."""
    docs, pos, d, p = [], [], 0, 0
    for t, x in enumerate(row):
        if t > 0 and row[t - 1] == eos:
            d, p = d + 1, 0
        docs.append(d)
        pos.append(p)
        p += 1
    return docs, pos


@pytest.mark.parametrize("row, docs, pos", [
    # several EOS in a row: each lone EOS is its own one-token document
    ([5, EOS, 7, 8, EOS, EOS, 9], [0, 0, 1, 1, 1, 2, 3], [0, 1, 0, 1, 2, 0, 0]),
    # EOS at t=0 ends the (unseen) previous document; no boundary *at* t=0 is possible
    ([EOS, 1, 2, EOS], [0, 1, 1, 1], [0, 0, 1, 2]),
    # EOS at the end belongs to the document it ends
    ([1, 2, 3, EOS], [0, 0, 0, 0], [0, 1, 2, 3]),
    ([1, 2, 3, 4], [0, 0, 0, 0], [0, 1, 2, 3]),
])
def test_hand_written_rows(row, docs, pos):
    d, p = segment_ids(torch.tensor([row]), EOS)
    assert d.dtype == p.dtype == torch.int64
    assert d[0].tolist() == docs and p[0].tolist() == pos


def test_rows_are_independent():
    inputs = torch.tensor([[1, EOS, 2, 3], [4, 5, 6, EOS]])
    d, p = segment_ids(inputs, EOS)
    assert d.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    assert p.tolist() == [[0, 1, 0, 1], [0, 1, 2, 3]]


def test_matches_loop_reference_on_random_rows():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 6, (8, 50), generator=g)
    inputs[inputs == 5] = EOS  # ~1/6 EOS, with runs
    d, p = segment_ids(inputs, EOS)
    for b in range(8):
        assert (d[b].tolist(), p[b].tolist()) == reference(inputs[b].tolist(), EOS)
    assert (d[:, 1:] >= d[:, :-1]).all() and (d[:, 0] == 0).all()


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[b, s\]"):
        segment_ids(torch.tensor([1, 2, 3]), EOS)
