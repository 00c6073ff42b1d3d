"""Pack text files into token shards: the default LM corpus, built from files already on every machine.

    files --(sorted, shuffled with seed)--> documents --(tokenize + EOS)--> one token stream
          --(Megatron-style cut: sample i = stream[i*L : i*L + L + 1])--> train samples | val samples (the last ones)
          --> webdataset shards + index (see lactron.data.shards)

Consecutive samples share one token (the last target of sample i is the first input of sample i+1), so no token
is wasted as an input and every token but the first is a target exactly once. The incomplete tail is dropped.
With no inputs the Python standard library's own source tree is used (~31 MB of .py, minus site-packages).
"""

import fnmatch
import os
import sysconfig
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lactron.data.errors import DataError
from lactron.data.shards import prepare_out_dir, write_index, write_split
from lactron.data.tokenizer import get_tokenizer

FIELDS = ["tokens.npy", "json"]  # primary field first: ShardSet.read_array(i) returns the tokens
THIRD_PARTY_DIRS = {"site-packages", "dist-packages"}  # under the stdlib root, but third-party code: not "the stdlib"


def prepare_text(out_dir, inputs=None, *, seq_len: int, pattern: str = "*.py", samples_per_shard: int = 256,
                 val_fraction: float = 0.01, max_tokens: int | None = None, seed: int = 0, tokenizer: str = "byte",
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Tokenize text files into `out_dir` as train/val token shards of seq_len + 1 tokens per sample.

    inputs: files and/or directories (recursed for files matching `pattern`); None = the stdlib source tree.
    max_tokens: stop reading once the stream has this many tokens (documents are read in shuffled order, so a
    small max_tokens gives a small but varied corpus quickly). Returns a summary dict.
    """
    t0 = time.time()
    if seq_len < 1 or samples_per_shard < 1:
        raise DataError(f"seq_len ({seq_len}) and samples_per_shard ({samples_per_shard}) must be >= 1")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_tokens is not None and max_tokens < seq_len + 1:
        raise DataError(f"max_tokens ({max_tokens}) must be at least seq_len + 1 ({seq_len + 1}) to make one sample")
    tok = get_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)  # fail before the slow part

    files, inputs_desc = list_inputs(inputs, pattern)
    if not files:
        raise DataError(f"no input files matching {pattern!r} in {inputs_desc['paths']}; check --inputs/--pattern")
    # shuffle file order (not content) so documents are mixed and max_tokens stops early on a varied subset
    order = np.random.default_rng(seed).permutation(len(files))
    docs, ntok, skipped = [], 0, 0
    for k in tqdm(order, desc="read", unit="file", disable=not progress):
        try:
            text = files[k].read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        if not text:
            skipped += 1  # an empty file would be a document of just EOS
            continue
        ids = tok.encode(text)
        docs.append(np.append(ids, np.array([tok.eos_id], dtype=ids.dtype)))
        ntok += len(docs[-1])
        if max_tokens is not None and ntok >= max_tokens:
            break
    stream = np.concatenate(docs).astype(tok.dtype) if docs else np.zeros(0, tok.dtype)
    if max_tokens is not None:
        stream = stream[:max_tokens]

    nsamples = (len(stream) - 1) // seq_len if len(stream) else 0
    if nsamples < 1:
        raise DataError(f"corpus too small: {len(stream)} tokens, need at least seq_len + 1 = {seq_len + 1}; "
                        f"add inputs or lower --seq-len")
    nval = 0
    if val_fraction > 0 and nsamples >= 2:
        nval = min(max(1, int(nsamples * val_fraction)), nsamples - 1)
    ntrain = nsamples - nval
    used = nsamples * seq_len + 1  # stream tokens covered by the samples (shared boundary tokens counted once)
    doc_starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    ndocs = int((doc_starts < used).sum())

    def samples(first: int, n: int, split: str):
        for j in range(n):
            i = first + j
            yield {"__key__": f"{j:09d}", "tokens.npy": stream[i * seq_len: i * seq_len + seq_len + 1],
                   "json": {"split": split, "index": j, "stream_sample": i, "stream_offset": i * seq_len}}

    splits = {}
    with tqdm(total=nsamples, desc="write", unit="sample", disable=not progress) as bar:
        for split, first, n in (("train", 0, ntrain), ("val", ntrain, nval)):
            shards = write_split(out_dir, split, samples(first, n, split), FIELDS,
                                 samples_per_shard=samples_per_shard, progress=bar)
            splits[split] = {"nsamples": n, "shards": shards}
    write_index(out_dir, {
        "kind": "tokens", "fields": FIELDS, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id, "seq_len": seq_len, "sample_len": seq_len + 1, "dtype": np.dtype(tok.dtype).name,
        "splits": splits, "total_tokens": used, "documents": ndocs, "inputs": inputs_desc, "files": len(files),
        "skipped_files": skipped, "seed": seed, "max_tokens": max_tokens, "val_fraction": val_fraction,
    })
    return {"out_dir": str(out_dir), "samples": {s: v["nsamples"] for s, v in splits.items()},
            "shards": {s: len(v["shards"]) for s, v in splits.items()}, "tokens": used, "documents": ndocs,
            "files": len(files), "skipped_files": skipped, "seconds": round(time.time() - t0, 2)}


def list_inputs(inputs, pattern: str) -> tuple[list[Path], dict]:
    """Files to read, sorted (the shuffle seed then fully determines the order), and a description for index.json.
    Explicit files are taken as given; directories are walked for `pattern` (for the default stdlib input,
    skipping site-packages/dist-packages)."""
    excluded = {"__pycache__"}
    if inputs is None:
        root = sysconfig.get_paths()["stdlib"]
        inputs, excluded = [root], excluded | THIRD_PARTY_DIRS
        desc = {"paths": inputs, "source": "python-stdlib"}
    else:
        inputs = [str(p) for p in inputs]
        desc = {"paths": inputs}
    desc.update(pattern=pattern, excluded_dirs=sorted(excluded))
    files = set()
    for p in map(Path, inputs):
        if p.is_file():
            files.add(p)
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = [d for d in dirnames if d not in excluded]  # prune in place: os.walk skips them
                files.update(Path(dirpath) / f for f in fnmatch.filter(filenames, pattern))
        else:
            raise DataError(f"input path '{p}' does not exist; pass existing files or directories to --inputs")
    return sorted(files), desc
