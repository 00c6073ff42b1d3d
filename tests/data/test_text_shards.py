"""prepare_text (stream cutting, split, index, determinism) and ShardSet (random access, verification, errors)."""

import hashlib
import json
import multiprocessing
import os
import pickle
import sysconfig
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lactron.data.cli import main as cli_main
from lactron.data.errors import DataError
from lactron.data.shards import ShardSet
from lactron.data.text_shards import list_inputs, prepare_text

L = 16  # seq_len


def make_corpus(root: Path) -> list[Path]:
    """A few files of mixed sizes; returns the readable *.py ones sorted (what prepare_text must use)."""
    (root / "pkg" / "sub").mkdir(parents=True)
    texts = {"a.py": "import os\nprint('héllo')\n" * 7, "pkg/b.py": "x = 1\n" * 40,
             "pkg/sub/c.py": "def f():\n    return '✓🙂'\n" * 9, "pkg/d.py": "# short\n",
             "z.py": "".join(f"v{i} = {i}\n" for i in range(60))}
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "notes.txt").write_text("not python\n" * 50)  # pattern mismatch: ignored
    (root / "bad.py").write_bytes(b"\xff\xfe\x00bad utf8")  # undecodable: skipped
    (root / "empty.py").write_bytes(b"")  # empty: skipped
    return sorted(root / n for n in texts)


def expected_stream(root: Path, seed: int) -> np.ndarray:
    """Independent derivation: all *.py sorted, permuted with seed, unusable ones dropped, each + EOS."""
    files = sorted(root.rglob("*.py"))
    out = []
    for k in np.random.default_rng(seed).permutation(len(files)):
        raw = files[k].read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if raw:
            out += list(raw) + [256]
    return np.array(out, dtype=np.int64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    return root


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "text"
    summary = prepare_text(out, [corpus], seq_len=L, samples_per_shard=7, val_fraction=0.1, seed=3, progress=False)
    return out, summary


def test_samples_are_the_megatron_cut_of_the_stream(corpus, dataset):
    out, summary = dataset
    stream = expected_stream(corpus, seed=3)
    n = (len(stream) - 1) // L
    nval = max(1, int(n * 0.1))
    assert summary["samples"] == {"train": n - nval, "val": nval}
    assert summary["skipped_files"] == 2 and summary["files"] == 7 and summary["tokens"] == n * L + 1
    got = [ShardSet(out, "train").read_array(i) for i in range(n - nval)]
    got += [ShardSet(out, "val").read_array(i) for i in range(nval)]
    for i, arr in enumerate(got):
        assert arr.dtype == np.uint16 and arr.shape == (L + 1,)
        np.testing.assert_array_equal(arr, stream[i * L: i * L + L + 1])
    index = json.loads((out / "index.json").read_text())
    assert (index["seq_len"], index["eos_id"], index["vocab_size"], index["dtype"]) == (L, 256, 257, "uint16")
    assert index["documents"] == 5 and index["seed"] == 3 and index["total_tokens"] == n * L + 1


def test_shards_are_plain_webdataset(dataset):
    out, summary = dataset
    urls = [str(p) for p in sorted(out.glob("train-*.tar"))]
    assert len(urls) == summary["shards"]["train"] == -(-summary["samples"]["train"] // 7)
    ref = ShardSet(out, "train")
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == len(ref)
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(s["tokens.npy"], ref.read_array(i))
        assert s["json"]["index"] == i and s["json"]["split"] == "train"


def test_index_checksums_and_sizes(dataset):
    out, _ = dataset
    index = json.loads((out / "index.json").read_text())
    for split in ("train", "val"):
        shards = index["splits"][split]["shards"]
        assert sum(s["nsamples"] for s in shards) == index["splits"][split]["nsamples"]
        for s in shards:
            for name, size, sha in ((s["name"], s["size"], s["sha256"]),
                                    (s["index"], s["index_size"], s["index_sha256"])):
                data = (out / name).read_bytes()
                assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
            # the .idx offsets point exactly at the tar members' data
            with tarfile.open(out / s["name"]) as tar:
                members = [m for m in tar if m.name.endswith(".tokens.npy")]
            idx = np.load(out / s["index"])
            assert idx[:, 0].tolist() == [[m.offset_data, m.size] for m in members]


def test_deterministic_and_seed_dependent(corpus, dataset, tmp_path):
    out, _ = dataset
    prepare_text(tmp_path / "same", [corpus], seq_len=L, samples_per_shard=7, val_fraction=0.1, seed=3, progress=False)
    prepare_text(tmp_path / "other", [corpus], seq_len=L, samples_per_shard=7, val_fraction=0.1, seed=4, progress=False)
    assert (tmp_path / "same" / "index.json").read_bytes() == (out / "index.json").read_bytes()
    assert ShardSet(tmp_path / "same", "train").fingerprint == ShardSet(out, "train").fingerprint
    assert ShardSet(tmp_path / "other", "train").fingerprint != ShardSet(out, "train").fingerprint


def test_refuses_non_empty_dir_and_overwrite_removes_stale_shards(corpus, tmp_path):
    out = tmp_path / "ds"
    prepare_text(out, [corpus], seq_len=L, samples_per_shard=3, progress=False)
    many = len(list(out.glob("train-*.tar")))
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        prepare_text(out, [corpus], seq_len=L, progress=False)
    s = prepare_text(out, [corpus], seq_len=L, samples_per_shard=1000, overwrite=True, progress=False)
    assert many > 1 and len(list(out.glob("train-*.tar"))) == s["shards"]["train"] == 1
    assert len(list(out.glob("*.idx.npy"))) == 2  # train + val, none left from the first run


def test_max_tokens_and_input_errors(corpus, tmp_path):
    s = prepare_text(tmp_path / "small", [corpus], seq_len=L, max_tokens=5 * L + 3, progress=False)
    assert s["tokens"] == 5 * L + 1 and sum(s["samples"].values()) == 5
    with pytest.raises(DataError, match="does not exist"):
        prepare_text(tmp_path / "x", [corpus / "nope"], seq_len=L, progress=False)
    with pytest.raises(DataError, match="too small"):
        prepare_text(tmp_path / "y", [corpus / "pkg" / "d.py"], seq_len=L, progress=False)
    with pytest.raises(DataError, match="no input files"):
        prepare_text(tmp_path / "z", [corpus], seq_len=L, pattern="*.rs", progress=False)


def test_default_inputs_are_the_stdlib_without_site_packages(tmp_path):
    files, desc = list_inputs(None, "*.py")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert desc["source"] == "python-stdlib" and stdlib / "os.py" in files and len(files) > 500
    assert not any(part in ("site-packages", "dist-packages") for f in files for part in f.relative_to(stdlib).parts)
    if not any(stdlib.glob("site-packages/**/*.py")):
        pytest.skip("this interpreter has no site-packages under the stdlib; exclusion not exercised")
    s = prepare_text(tmp_path / "std", seq_len=64, max_tokens=20_000, progress=False)
    assert s["tokens"] == (20_000 - 1) // 64 * 64 + 1 and s["samples"]["val"] >= 1


def test_cli_prepare_text(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["prepare-text", "--inputs", str(corpus), "--out", str(out), "--seq-len", str(L), "--no-progress"]
    assert cli_main(argv) == 0
    assert str(out) in capsys.readouterr().out and ShardSet(out, "train").index["seq_len"] == L
    assert cli_main(argv) == 2 and "--overwrite" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- ShardSet

def copy_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_random_access_equals_sequential_read(dataset):
    out, _ = dataset
    ss = ShardSet(out, "train")
    sequential = []
    for tar_path in ss.iter_shard_paths():
        with tarfile.open(tar_path) as tar:
            sequential += [tar.extractfile(m).read() for m in tar if m.name.endswith(".tokens.npy")]
    order = np.random.default_rng(0).permutation(len(ss))
    assert len(sequential) == len(ss) > 7  # several shards
    for i in order:
        assert ss.read(int(i)) == sequential[i]
    assert ss.read_json(5)["index"] == 5 and ss.read(-1) == sequential[-1]
    with pytest.raises(IndexError):
        ss.read(len(ss))
    clone = pickle.loads(pickle.dumps(ss))  # spawn workers get a copy without open handles
    assert clone._files == {} and clone.read(3) == sequential[3]


def _child_read(ss, q):
    q.put((ss.read(3), ss._pid == os.getpid()))


def test_forked_child_opens_its_own_handles(dataset):
    ss = ShardSet(dataset[0], "train")
    ss.read(0)  # the parent now holds an open handle, which a fork duplicates (sharing its file offset)
    where = ss._files[0].tell()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(ss, q))
    p.start()
    data, owns = q.get(timeout=30)
    p.join()
    assert ss._files[0].tell() == where  # the child's seek did not move the parent's (shared) file offset
    assert data == ss.read(3) and owns


def test_truncated_shard_fails_size_check(dataset, tmp_path):
    d = copy_dataset(dataset[0], tmp_path / "d")
    shard = d / "train-000001.tar"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-512])
    with pytest.raises(DataError, match=rf"train-000001.tar' is corrupt: size {size - 512} bytes.*expects {size}"):
        ShardSet(d, "train", verify="size")
    ShardSet(d, "val", verify="full")  # other split unaffected
    (d / "val-000000.idx.npy").unlink()
    with pytest.raises(DataError, match="val-000000.idx.npy' is missing"):
        ShardSet(d, "val")


def test_flipped_byte_fails_full_check_only(dataset, tmp_path):
    d = copy_dataset(dataset[0], tmp_path / "d")
    shard = d / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    ss = ShardSet(d, "train", verify="size")  # same size: the cheap check cannot see it
    with pytest.raises(DataError, match=r"train-000000.tar' is corrupt: sha256 [0-9a-f]{64}.*expects"):
        ss.verify("full")
    with pytest.raises(DataError, match="unknown verify level"):
        ss.verify("paranoid")


def test_missing_path_index_or_split_name_the_prepare_command(dataset, tmp_path):
    with pytest.raises(DataError, match=r"'.*nope' does not exist; create it with: lactron data prepare-text --out"):
        ShardSet(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no index.json.*lactron data prepare-text --out"):
        ShardSet(tmp_path / "empty", "train")
    with pytest.raises(DataError, match=r"split 'test' is not in dataset.*train, val.*lactron data prepare-text"):
        ShardSet(dataset[0], "test")
