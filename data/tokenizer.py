"""Byte-level tokenizer: the default LM vocabulary, needing no download and no training.

ids 0..255 are the UTF-8 bytes of the text, 256 is the end-of-document token (EOS), so vocab_size = 257. Every
string round-trips exactly and every byte sequence decodes (invalid UTF-8 becomes U+FFFD), which is all a
from-scratch fast-weight LM on source code needs. Ids are stored as uint16 on disk.
"""

import numpy as np

from lactron.data.errors import DataError

EOS_TEXT = "\n<|eos|>\n"  # how decode() renders the end-of-document token


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus one EOS token appended after each document."""

    name = "byte"
    eos_id = 256
    vocab_size = 257
    dtype = np.uint16  # on-disk token dtype; 257 ids fit easily

    def encode(self, text: str) -> np.ndarray:
        """text -> [n] uint16 ids, one per UTF-8 byte (no EOS; the caller appends it per document)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        """[n] ids (list, numpy or torch) -> text. EOS is rendered as EOS_TEXT so document boundaries stay visible;
        invalid UTF-8 (e.g. a sample cut mid-character) decodes with errors="replace"."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > self.eos_id):
            raise DataError(f"token id out of range for the byte tokenizer (valid: 0..{self.eos_id}); "
                            f"got min {ids.min()}, max {ids.max()}")
        parts, start = [], 0
        for end in np.flatnonzero(ids == self.eos_id).tolist() + [ids.size]:
            parts.append(ids[start:end].astype(np.uint8).tobytes().decode("utf-8", errors="replace"))
            start = end + 1
        return EOS_TEXT.join(parts)


TOKENIZERS = {"byte": ByteTokenizer}


def get_tokenizer(name: str) -> ByteTokenizer:
    """Tokenizer by name (the name stored in a dataset's index.json)."""
    if name not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {name!r}; valid choices: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name]()
