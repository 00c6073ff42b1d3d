"""TokenDataset / GlobalBatchSampler / TokenLoader: coverage across DP ranks and workers, exact resume, DP-size
independence, and the errors that protect a resumed run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lactron.data.errors import DataError
from lactron.data.loader import GlobalBatchSampler, TokenDataset, TokenLoader, build_token_loader
from lactron.data.shards import ShardSet
from lactron.data.text_shards import prepare_text

L, N = 8, 48  # seq_len, train samples (stream of N*L + 1 tokens exactly, val_fraction=0)


def write_corpus(root: Path, seed: int) -> Path:
    root.mkdir()
    rng = np.random.default_rng(seed)
    for k in range(6):  # random printable text, so every sample has distinct tokens
        (root / f"f{k}.py").write_bytes(bytes(rng.integers(32, 127, 80).tolist()))
    return root


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    out = tmp / "ds"
    prepare_text(out, [write_corpus(tmp / "corpus", 0)], seq_len=L, samples_per_shard=5, val_fraction=0,
                 max_tokens=N * L + 1, progress=False)
    assert len(ShardSet(out, "train")) == N
    return out


def loader(ds, **kw):
    args = dict(seq_len=L, micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=1, seed=7)
    return build_token_loader(ds, "train", **{**args, **kw})


def take(it, n):
    return [next(it) for _ in range(n)]


def global_batches(sampler_kw, dp_size, steps, micro=2):
    """Set of sample indices per global step, gathered over all DP ranks."""
    per_rank_micro = sampler_kw["global_batch_size"] // (dp_size * micro)
    out = [set() for _ in range(steps)]
    for r in range(dp_size):
        it = iter(GlobalBatchSampler(N, micro_batch_size=micro, dp_rank=r, dp_size=dp_size, **sampler_kw))
        for j in range(steps):
            for _ in range(per_rank_micro):
                out[j].update(next(it))
    return out


def test_dataset_item_and_seq_len_mismatch(ds):
    d = TokenDataset(ds, "train", L)
    item = d[5]
    assert item["tokens"].dtype == torch.int64 and item["tokens"].shape == (L + 1,)
    assert item["tokens"].tolist() == ShardSet(ds, "train").read_array(5).tolist()
    assert item["index"] == 5 and item["worker"] == -1
    assert d[5]["tokens"][-1] == d[6]["tokens"][0]  # consecutive samples share one token
    l = loader(ds)
    assert (l.eos_id, l.vocab_size, l.seq_len, l.num_samples) == (256, 257, L, N)
    with pytest.raises(DataError, match=rf"prepared with seq_len {L} but seq_len 16 was requested.*--seq-len 16"):
        TokenDataset(ds, "train", 16)


def test_sampler_epochs_are_permutations_and_cross_boundaries():
    s = GlobalBatchSampler(N, global_batch_size=10, micro_batch_size=2, dp_rank=0, dp_size=1, seed=1)
    it = iter(s)
    order = [i for _ in range(2 * N // 2) for i in next(it)]  # two epochs; 48 is not a multiple of 10
    assert sorted(order[:N]) == list(range(N)) and sorted(order[N:]) == list(range(N))
    assert order[:N] != order[N:]  # a fresh permutation per epoch
    assert order[:N] == np.random.default_rng([1, 0]).permutation(N).tolist()


def test_global_batch_sets_do_not_depend_on_dp_size():
    kw = dict(global_batch_size=8, seed=3)
    ref = global_batches(kw, 1, steps=9)  # 72 samples: crosses the epoch boundary at 48
    assert global_batches(kw, 2, steps=9) == ref and global_batches(kw, 4, steps=9) == ref
    assert global_batches(dict(global_batch_size=8, seed=4), 1, steps=9) != ref


def test_two_dp_ranks_two_workers_cover_one_epoch_exactly(ds):
    G, micro, dp = 8, 2, 2
    steps = N // G
    per_rank = []
    for r in range(dp):
        it = iter(loader(ds, dp_rank=r, dp_size=dp, global_batch_size=G, micro_batch_size=micro, num_workers=2))
        batches = take(it, steps * G // (dp * micro))
        per_rank.append(batches)
        assert {w for b in batches for w in b["worker"].tolist()} == {0, 1}  # both worker processes served batches
        for b in batches:
            assert b["tokens"].shape == (micro, L + 1) and b["tokens"].dtype == torch.int64
    everything = [i for batches in per_rank for b in batches for i in b["index"].tolist()]
    assert sorted(everything) == list(range(N))  # every sample exactly once: no duplicate, none lost
    per_step = G // (dp * micro)
    for j in range(steps):
        sets = [{i for b in per_rank[r][j * per_step:(j + 1) * per_step] for i in b["index"].tolist()}
                for r in range(dp)]
        assert not sets[0] & sets[1] and len(sets[0]) == len(sets[1]) == G // dp


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_mid_run(ds, num_workers):
    k, G, micro = 7, 8, 2  # 7 global batches = 56 samples: the cursor sits in epoch 1
    reference = take(iter(loader(ds)), (k + 3) * G // micro)
    interrupted = loader(ds, num_workers=num_workers)
    it = iter(interrupted)
    take(it, k * G // micro + 1)  # k whole global batches + one micro-batch of the next
    state = interrupted.state_dict()
    assert state["consumed_samples"] == k * G  # the partial global batch is not counted
    assert (state["epoch"], state["position_in_epoch"], state["global_step"]) == (1, k * G - N, k)
    state = json.loads(json.dumps(state))  # a checkpoint stores it as JSON
    resumed = TokenLoader.from_state(state, ds, "train", micro_batch_size=micro, dp_rank=0, dp_size=1,
                                     num_workers=num_workers)
    got = take(iter(resumed), 3 * G // micro)
    for a, b in zip(got, reference[k * G // micro:]):
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["index"], b["index"])
    assert resumed.state_dict()["consumed_samples"] == (k + 3) * G


def test_resume_dp2_cursor_with_dp1_continues_the_global_sequence(ds):
    G, micro, k = 8, 2, 3
    states = []
    for r in range(2):
        l2 = loader(ds, dp_rank=r, dp_size=2)
        take(iter(l2), k * G // (2 * micro))
        states.append(l2.state_dict())
    assert states[0] == states[1]  # one cursor for the whole run
    resumed = TokenLoader.from_state(states[0], ds, "train", micro_batch_size=4, dp_rank=0, dp_size=1)
    got = take(iter(resumed), 2 * G // 4)
    ref = take(iter(loader(ds)), (k + 2) * G // micro)[k * G // micro:]
    cat = lambda bs: torch.cat([b["tokens"] for b in bs])
    assert torch.equal(cat(got), cat(ref))


def test_spawn_workers(ds):
    l = loader(ds, num_workers=2, multiprocessing_context="spawn")
    got = take(iter(l), 4)
    ref = take(iter(loader(ds)), 4)
    assert [b["worker"].tolist() for b in got] == [[0, 0], [1, 1], [0, 0], [1, 1]]
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(got, ref))


def test_batch_size_errors(ds):
    with pytest.raises(DataError, match=r"global_batch_size 10 is not divisible by .* 2 x 2 = 4"):
        loader(ds, global_batch_size=10, dp_size=2)
    with pytest.raises(DataError, match="consumed_samples 4 must be a non-negative multiple of global_batch_size 8"):
        loader(ds, consumed_samples=4)
    with pytest.raises(DataError, match="dp_rank 2 out of range"):
        loader(ds, dp_rank=2, dp_size=2)


def test_resume_refuses_a_changed_dataset_or_config(ds, tmp_path):
    state = loader(ds).state_dict()
    loader(ds, consumed_samples=16).check_state(state)  # the cursor position itself is not compared
    for key, bad, what in (("fingerprint", "0" * 64, "dataset content"), ("seed", 8, "data seed"),
                           ("num_samples", N + 1, "number of samples"), ("split", "val", "split")):
        with pytest.raises(DataError, match=f"checkpoint's {what}"):
            loader(ds).load_state_dict({**state, key: bad})
    with pytest.raises(DataError, match=rf"seq_len {L} but seq_len 4"):
        TokenLoader.from_state({**state, "seq_len": 4}, ds, "train", micro_batch_size=2, dp_rank=0, dp_size=1)
    # a re-prepared dataset with other content under the same path and shape
    other = tmp_path / "other"
    prepare_text(other, [write_corpus(tmp_path / "corpus", 1)], seq_len=L, samples_per_shard=5, val_fraction=0,
                 max_tokens=N * L + 1, progress=False)
    with pytest.raises(DataError, match="dataset content"):
        TokenLoader.from_state(state, other, "train", micro_batch_size=2, dp_rank=0, dp_size=1)
