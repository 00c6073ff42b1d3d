import numpy as np
import pytest
import torch

from lactron.data.errors import DataError
from lactron.data.tokenizer import EOS_TEXT, ByteTokenizer, get_tokenizer


def test_round_trip_including_non_ascii():
    tok = get_tokenizer("byte")
    text = "def f(x):\n    return 'héllo wörld ✓ 🙂 日本'\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint16
    assert ids.tolist() == list(text.encode("utf-8"))
    assert len(ids) > len(text)  # multi-byte characters really are several tokens
    assert tok.decode(ids) == text
    assert tok.decode(torch.from_numpy(ids.astype(np.int64))) == text


def test_constants_and_eos_rendering():
    tok = ByteTokenizer()
    assert (tok.name, tok.eos_id, tok.vocab_size) == ("byte", 256, 257)
    ids = np.concatenate([tok.encode("a"), [256], tok.encode("b"), [256]])
    assert tok.decode(ids) == "a" + EOS_TEXT + "b" + EOS_TEXT
    assert tok.encode("").size == 0 and tok.decode([]) == ""


def test_decode_invalid_utf8_is_replaced_and_out_of_range_rejected():
    tok = ByteTokenizer()
    cut = tok.encode("é")[:1]  # first byte of a two-byte character
    assert tok.decode(cut) == "\ufffd"
    with pytest.raises(DataError, match="out of range"):
        tok.decode([65, 257])


def test_get_tokenizer_unknown_names_valid_choices():
    with pytest.raises(DataError, match=r"unknown tokenizer 'gpt2'.*byte"):
        get_tokenizer("gpt2")
