"""Exact, resumable, DP-size-independent token loading (Megatron-style "consumed samples" cursor).

The whole run reads one fixed global sequence of sample indices, the concatenation of per-epoch permutations:

    order = perm(seed, 0) ++ perm(seed, 1) ++ ...          perm(seed, e) = default_rng([seed, e]).permutation(N)
    global batch j = order[j*G : (j+1)*G]                   G = global_batch_size (may straddle an epoch boundary)
    DP rank r reads  order[j*G + r*G/dp : j*G + (r+1)*G/dp] as G/(dp*micro) micro-batches of micro_batch_size

So the *set* of samples in global batch j depends only on (seed, N, G), never on dp_size or num_workers, and the
whole cursor is one number, consumed_samples = (global batches finished) * G: a checkpoint taken at dp=4 resumes
exactly at dp=2. The dataset is map-style (random access through lactron.data.shards), so resuming costs nothing
(no replaying of skipped batches), and DataLoader workers just take whole micro-batches round-robin.

Split by DP rank, not by global rank: TP and CP peers of one DP rank must see the same tokens (DESIGN.md §4).
"""

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from lactron.data.errors import DataError
from lactron.data.shards import ShardSet

STATE_VERSION = 1


def prepare_hint(path, seq_len) -> str:
    return f"lactron data prepare-text --out {path} --seq-len {seq_len}"


class TokenDataset(Dataset):
    """Sample i of a token shard split -> {"tokens": int64 [seq_len + 1], "index": i, "worker": loader worker id or -1}.

    Picklable (spawn workers): the ShardSet drops its file handles when pickled and reopens them lazily."""

    def __init__(self, path, split: str, seq_len: int, verify: str = "size"):
        self.shards = ShardSet(path, split, verify=verify, hint=prepare_hint(path, seq_len))
        meta = self.shards.index
        if meta.get("kind") != "tokens":
            raise DataError(f"dataset '{path}' holds {meta.get('kind')!r} samples, not tokens; point data.path at a "
                            f"token dataset made with: {prepare_hint(path, seq_len)}")
        if meta["seq_len"] != seq_len:
            raise DataError(f"dataset '{path}' was prepared with seq_len {meta['seq_len']} but seq_len {seq_len} was "
                            f"requested; re-prepare it with: {prepare_hint(path, seq_len)} --overwrite "
                            f"(or set seq_len to {meta['seq_len']})")
        self.seq_len, self.eos_id, self.vocab_size = seq_len, meta["eos_id"], meta["vocab_size"]
        self.fingerprint = self.shards.fingerprint

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict:
        tokens = self.shards.read_array(i)
        info = get_worker_info()
        return {"tokens": torch.from_numpy(tokens.astype(np.int64)), "index": i,
                "worker": info.id if info is not None else -1}


class GlobalBatchSampler(Sampler):
    """Infinite sampler of this DP rank's micro-batches (lists of sample indices), starting at `consumed_samples`."""

    def __init__(self, num_samples: int, *, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 seed: int, consumed_samples: int = 0):
        check_batch_sizes(global_batch_size, micro_batch_size, dp_size)
        if num_samples < 1:
            raise DataError("the dataset split has no samples; prepare more data or use another split")
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank {dp_rank} out of range for dp_size {dp_size}")
        if consumed_samples < 0 or consumed_samples % global_batch_size:
            raise DataError(f"consumed_samples {consumed_samples} must be a non-negative multiple of "
                            f"global_batch_size {global_batch_size} (the cursor only counts whole global batches)")
        self.num_samples, self.seed = num_samples, seed
        self.G, self.micro, self.dp_rank, self.dp_size = global_batch_size, micro_batch_size, dp_rank, dp_size
        self.consumed_samples = consumed_samples
        self._perm_epoch, self._perm = None, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """perm(seed, epoch): [N] int64. Cached: consecutive batches nearly always hit the same epoch."""
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def global_positions(self, start: int, stop: int) -> np.ndarray:
        """Sample indices at global-order positions [start, stop), crossing epoch boundaries."""
        out = []
        while start < stop:
            epoch, pos = divmod(start, self.num_samples)
            take = min(stop - start, self.num_samples - pos)
            out.append(self.epoch_order(epoch)[pos: pos + take])
            start += take
        return np.concatenate(out)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.G // self.dp_size
        step = self.consumed_samples // self.G
        while True:
            first = step * self.G + self.dp_rank * per_rank
            mine = self.global_positions(first, first + per_rank)
            for k in range(0, per_rank, self.micro):
                yield mine[k: k + self.micro].tolist()
            step += 1


def check_batch_sizes(global_batch_size: int, micro_batch_size: int, dp_size: int) -> None:
    if min(global_batch_size, micro_batch_size, dp_size) < 1:
        raise DataError(f"global_batch_size ({global_batch_size}), micro_batch_size ({micro_batch_size}) and "
                        f"dp_size ({dp_size}) must all be >= 1")
    if global_batch_size % (micro_batch_size * dp_size):
        raise DataError(f"global_batch_size {global_batch_size} is not divisible by micro_batch_size x dp_size = "
                        f"{micro_batch_size} x {dp_size} = {micro_batch_size * dp_size}; pick a global batch size "
                        f"that is a multiple of it")


class TokenLoader:
    """Iterable of micro-batch dicts {"tokens": int64 [micro, seq_len + 1], "index": [micro], "worker": [micro]}.

    Infinite. Each `iter()` starts at the current cursor. `state_dict()` counts only *finished* global batches of
    this rank (micro-batches of a partly read global batch are read again after a resume), which is what a
    checkpoint taken after an optimizer step wants: every rank finished the same global batches.
    """

    def __init__(self, dataset: TokenDataset, *, micro_batch_size: int, global_batch_size: int, dp_rank: int,
                 dp_size: int, seed: int, consumed_samples: int = 0, num_workers: int = 0,
                 multiprocessing_context=None):
        check_batch_sizes(global_batch_size, micro_batch_size, dp_size)
        self.dataset, self.seed = dataset, seed
        self.micro, self.G, self.dp_rank, self.dp_size = micro_batch_size, global_batch_size, dp_rank, dp_size
        self.num_workers, self.multiprocessing_context = num_workers, multiprocessing_context
        self.micro_per_step = global_batch_size // (dp_size * micro_batch_size)  # this rank's share of one step
        self._sampler(consumed_samples)  # validate the cursor now, not at first iteration
        self.consumed_samples = consumed_samples

    seq_len = property(lambda self: self.dataset.seq_len)
    eos_id = property(lambda self: self.dataset.eos_id)
    vocab_size = property(lambda self: self.dataset.vocab_size)
    num_samples = property(lambda self: len(self.dataset))

    def _sampler(self, consumed_samples: int) -> GlobalBatchSampler:
        return GlobalBatchSampler(len(self.dataset), global_batch_size=self.G, micro_batch_size=self.micro,
                                  dp_rank=self.dp_rank, dp_size=self.dp_size, seed=self.seed,
                                  consumed_samples=consumed_samples)

    def __iter__(self) -> Iterator[dict]:
        start = self.consumed_samples
        loader = DataLoader(self.dataset, batch_sampler=self._sampler(start), num_workers=self.num_workers,
                            multiprocessing_context=self.multiprocessing_context if self.num_workers else None)
        for n, batch in enumerate(loader, start=1):
            # update before yielding: the caller holds this batch when it next asks for state_dict()
            self.consumed_samples = start + (n // self.micro_per_step) * self.G
            yield batch

    def state_dict(self) -> dict:
        """JSON-able cursor. Only consumed_samples is needed to resume; the rest validates and informs."""
        n, c = len(self.dataset), self.consumed_samples
        return {"version": STATE_VERSION, "consumed_samples": c, "seed": self.seed, "global_batch_size": self.G,
                "seq_len": self.dataset.seq_len, "num_samples": n, "fingerprint": self.dataset.fingerprint,
                "split": self.dataset.shards.split, "global_step": c // self.G, "epoch": c // n,
                "position_in_epoch": c % n}

    def check_state(self, state: dict) -> None:
        """Raise DataError unless checkpointed cursor `state` belongs to this loader's dataset and config: resuming
        on changed data (or another seed/seq_len/split) would silently read a different sample sequence.
        consumed_samples is not compared (the caller may set it from its own checkpoint manifest)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state version {state.get('version')!r} is not {STATE_VERSION}; "
                            f"this checkpoint was written by an incompatible lactron")
        mine = self.state_dict()
        for key, what in (("fingerprint", "dataset content (index.json sha256)"), ("seq_len", "seq_len"),
                          ("seed", "data seed"), ("num_samples", "number of samples"), ("split", "split")):
            if state.get(key) != mine[key]:
                raise DataError(f"cannot resume: the checkpoint's {what} is {state.get(key)!r} but the current one "
                                f"is {mine[key]!r}; restore the dataset/config the run was started with, or start a "
                                f"new run instead of resuming")

    def load_state_dict(self, state: dict) -> None:
        """check_state, then move the cursor to state["consumed_samples"] (takes effect at the next iter())."""
        self.check_state(state)
        self._sampler(state["consumed_samples"])  # validates divisibility by this loader's global batch size
        self.consumed_samples = state["consumed_samples"]

    @classmethod
    def from_state(cls, state: dict, path, split: str, *, micro_batch_size: int, dp_rank: int, dp_size: int,
                   num_workers: int = 0, verify: str = "size", multiprocessing_context=None) -> "TokenLoader":
        """Rebuild a loader from a checkpointed cursor; dp_size/micro/num_workers may differ from the saved run."""
        loader = build_token_loader(path, split, seq_len=state["seq_len"], micro_batch_size=micro_batch_size,
                                    global_batch_size=state["global_batch_size"], dp_rank=dp_rank, dp_size=dp_size,
                                    seed=state["seed"], num_workers=num_workers, verify=verify,
                                    multiprocessing_context=multiprocessing_context)
        loader.load_state_dict(state)
        return loader


def build_token_loader(path, split: str, *, seq_len: int, micro_batch_size: int, global_batch_size: int,
                       dp_rank: int, dp_size: int, seed: int, consumed_samples: int = 0, num_workers: int = 0,
                       verify: str = "size", multiprocessing_context=None) -> TokenLoader:
    """TokenLoader over split `split` of the token dataset at `path` for one DP rank (see module docstring)."""
    check_batch_sizes(global_batch_size, micro_batch_size, dp_size)  # before touching the disk
    dataset = TokenDataset(path, split, seq_len, verify=verify)
    return TokenLoader(dataset, micro_batch_size=micro_batch_size, global_batch_size=global_batch_size,
                       dp_rank=dp_rank, dp_size=dp_size, seed=seed, consumed_samples=consumed_samples,
                       num_workers=num_workers, multiprocessing_context=multiprocessing_context)
