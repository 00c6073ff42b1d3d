"""Indexed webdataset shard sets: the on-disk format shared by every lactron dataset, and its random-access reader.

A dataset directory holds real webdataset tar shards (readable by `webdataset.WebDataset` as they are) plus an
index that turns "global sample i" into one seek + one read, so a map-style loader can serve any sample order
(exact resume, DP-size-independent batches) without scanning tars:

    out_dir/
      index.json                 written last, atomically: what the dataset is, and every file's size + sha256
      train-000000.tar           samples  {key}.{field} for each field, e.g. {key}.json + {key}.tokens.npy
      train-000000.idx.npy       int64 [nsamples, nfields, 2]: (byte offset, size) of each member's data in the tar
      ...  val-000000.tar, val-000000.idx.npy, ...

index.json:  {"format": "lactron-shards", "version": 1, "fields": [primary field, ...], <dataset-specific keys>,
              "splits": {split: {"nsamples": n, "shards": [{"name", "nsamples", "size", "sha256",
                                                              "index", "index_size", "index_sha256"}, ...]}}}

Nothing here knows about tokens: text shards use fields ["tokens.npy", "json"], video shards ["latent.npy", "json"].
"""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import webdataset as wds

from lactron.data.errors import DataError

FORMAT, VERSION = "lactron-shards", 1
VERIFY_LEVELS = ("none", "size", "full")


# ----------------------------------------------------------------------------------------------------------- writing

def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`, refusing to mix a new dataset into a non-empty directory unless `overwrite`.

    With overwrite, only this format's files are removed (index.json first, so a crash never leaves an index that
    points at half-deleted shards); anything else in the directory is left alone."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output path '{out_dir}' exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise DataError(f"output directory '{out_dir}' is not empty; pass --overwrite (overwrite=True) to replace "
                            f"the dataset in it, or choose another --out")
        (out_dir / "index.json").unlink(missing_ok=True)
        for p in list(out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar")) + \
                list(out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].idx.npy")) + list(out_dir.glob("index.json.tmp*")):
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def write_split(out_dir: Path, split: str, samples: Iterable[dict], fields: list[str], *,
                samples_per_shard: int, progress=None) -> list[dict]:
    """Write `samples` (webdataset dicts: "__key__" + one value per field) as shards `{split}-%06d.tar`, each with
    its `.idx.npy`. `progress` (a tqdm bar or None) is advanced once per sample. Returns the shard records for
    index.json. mtime=0 makes the bytes (hence the sha256s and the dataset fingerprint) reproducible."""
    out_dir, shards, writer, buffered = Path(out_dir), [], None, 0

    def close_shard():
        writer.close()
        shards.append(_shard_record(out_dir, name, fields, buffered))

    for sample in samples:
        if writer is None or buffered == samples_per_shard:
            if writer is not None:
                close_shard()
            name, buffered = f"{split}-{len(shards):06d}.tar", 0
            writer = wds.TarWriter(str(out_dir / name), mtime=0)
        if sorted(k for k in sample if k != "__key__") != sorted(fields):
            raise ValueError(f"sample {sample.get('__key__')} has fields {sorted(sample)}, expected {fields}")
        writer.write(sample)
        buffered += 1
        if progress is not None:
            progress.update(1)
    if writer is not None:
        close_shard()
    return shards


def _shard_record(out_dir: Path, name: str, fields: list[str], nsamples: int) -> dict:
    """Index a closed shard: (offset, size) of every member's data, from tarfile's own header parsing."""
    idx = index_tar(out_dir / name, fields)
    if len(idx) != nsamples:
        raise RuntimeError(f"{name}: wrote {nsamples} samples but found {len(idx)} in the tar")
    idx_name = name[: -len(".tar")] + ".idx.npy"
    np.save(out_dir / idx_name, idx)
    return {"name": name, "nsamples": nsamples, **file_stats(out_dir / name),
            "index": idx_name, **{f"index_{k}": v for k, v in file_stats(out_dir / idx_name).items()}}


def index_tar(tar_path: Path, fields: list[str]) -> np.ndarray:
    """[nsamples, len(fields), 2] int64 (offset_data, size) of `{key}.{field}` members, samples in tar order."""
    rows, current_key, row = [], None, None
    with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
            key, _, field = m.name.partition(".")
            if key != current_key:
                current_key, row = key, [None] * len(fields)
                rows.append(row)
            if field in fields:
                row[fields.index(field)] = (m.offset_data, m.size)
    for r in rows:
        if any(x is None for x in r):
            raise RuntimeError(f"{tar_path}: a sample is missing one of the fields {fields}")
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), len(fields), 2)


def file_stats(path: Path) -> dict:
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_index(out_dir: Path, index: dict) -> None:
    """Write index.json atomically (temp file + os.replace): it is the commit point of a dataset."""
    out_dir = Path(out_dir)
    tmp = out_dir / f"index.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **index}, indent=1) + "\n")
    os.replace(tmp, out_dir / "index.json")


# ----------------------------------------------------------------------------------------------------------- reading

class ShardSet:
    """Random access to one split of an indexed shard set: global sample i (shards concatenated in index order).

    File handles are opened lazily and belong to the process that opened them: after a DataLoader worker fork the
    child notices the new pid and opens its own (a forked fd shares its seek position with the parent), and
    pickling (spawn) drops them.
    """

    MAX_OPEN = 64  # per process; beyond it the oldest handle is closed (video sets can have thousands of shards)

    def __init__(self, path, split: str, *, verify: str = "size", hint: str | None = None):
        self.path, self.split = Path(path), split
        # what to run when the data is missing or broken; callers that know more (seq_len, video) pass their own
        self.hint = hint or f"lactron data prepare-text --out {path}"
        if not self.path.is_dir():
            raise DataError(f"data.path '{path}' does not exist; create it with: {self.hint}")
        index_file = self.path / "index.json"
        if not index_file.is_file():
            raise DataError(f"data.path '{path}' has no index.json (not a prepared dataset, or preparation was "
                            f"interrupted); create it with: {self.hint} --overwrite")
        raw = index_file.read_bytes()
        self.fingerprint = hashlib.sha256(raw).hexdigest()  # changes whenever any shard's content changes
        try:
            self.index = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"'{index_file}' is not valid JSON ({e}); re-create it with: {self.hint} --overwrite")
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise DataError(f"'{index_file}' is format {self.index.get('format')!r} v{self.index.get('version')}, "
                            f"this reader needs {FORMAT!r} v{VERSION}; re-create it with: {self.hint} --overwrite")
        splits = self.index["splits"]
        if split not in splits:
            raise DataError(f"split {split!r} is not in dataset '{path}' (it has: {', '.join(splits)}); use one of "
                            f"those, or re-create the dataset with: {self.hint} --overwrite")
        self.fields: list[str] = self.index["fields"]
        self.shards: list[dict] = splits[split]["shards"]
        self.verify(verify)
        self._idx, self._starts = self._load_offsets()
        self._files, self._pid = {}, None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, i: int, field: str | None = None) -> bytes:
        """Raw bytes of sample i's `field` member (default: the primary field, index.json's fields[0])."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {self.split!r} split with {n} samples")
        i %= n
        k = int(np.searchsorted(self._starts, i, side="right")) - 1  # shard holding sample i
        offset, size = self._idx[i, self.fields.index(field) if field else 0]
        f = self._file(k)
        f.seek(int(offset))
        data = f.read(int(size))
        if len(data) != size:
            raise DataError(f"short read from shard '{self.path / self.shards[k]['name']}' (sample {i}: got "
                            f"{len(data)} of {size} bytes; the file changed after verification); re-create the "
                            f"dataset with: {self.hint} --overwrite")
        return data

    def read_array(self, i: int, field: str | None = None) -> np.ndarray:
        """Sample i's `.npy` member as an array (no pickles)."""
        return np.load(io.BytesIO(self.read(i, field)), allow_pickle=False)

    def read_json(self, i: int, field: str = "json") -> dict:
        return json.loads(self.read(i, field))

    def verify(self, level: str = "size") -> None:
        """"none": trust the files; "size": every shard and .idx.npy exists with its recorded size (cheap, default);
        "full": also its sha256 (reads everything). Raises DataError on the first mismatch."""
        if level not in VERIFY_LEVELS:
            raise DataError(f"unknown verify level {level!r}; valid choices: {', '.join(VERIFY_LEVELS)}")
        if level == "none":
            return
        for s in self.shards:
            for name, size, sha in ((s["name"], s["size"], s["sha256"]),
                                    (s["index"], s["index_size"], s["index_sha256"])):
                p = self.path / name
                if not p.is_file():
                    raise DataError(f"shard file '{p}' is missing (listed in index.json); re-create the dataset "
                                    f"with: {self.hint} --overwrite")
                actual = p.stat().st_size
                if actual != size:
                    raise DataError(f"shard file '{p}' is corrupt: size {actual} bytes, index.json expects {size}; "
                                    f"re-create the dataset with: {self.hint} --overwrite")
                if level == "full" and (actual := file_sha256(p)) != sha:
                    raise DataError(f"shard file '{p}' is corrupt: sha256 {actual}, index.json expects {sha}; "
                                    f"re-create the dataset with: {self.hint} --overwrite")

    def iter_shard_paths(self) -> Iterator[Path]:
        """Tar paths in index order, e.g. to hand to webdataset.WebDataset for streaming."""
        return (self.path / s["name"] for s in self.shards)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None  # handles never cross process boundaries
        return state

    def _file(self, k: int):
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()  # forked: the inherited handles are the parent's; drop them
        f = self._files.get(k)
        if f is None:
            if len(self._files) >= self.MAX_OPEN:
                self._files.pop(next(iter(self._files))).close()
            f = self._files[k] = open(self.path / self.shards[k]["name"], "rb", buffering=0)
        return f

    def _load_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """All shards' (offset, size) tables stacked: [N, nfields, 2]; and the first global index of each shard."""
        tables = []
        for s in self.shards:
            p = self.path / s["index"]
            try:
                t = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read shard index '{p}' ({e}); re-create the dataset with: "
                                f"{self.hint} --overwrite")
            if t.shape != (s["nsamples"], len(self.fields), 2) or \
                    (len(t) and int((t[..., 0] + t[..., 1]).max()) > s["size"]):
                raise DataError(f"shard index '{p}' does not match its shard (shape {t.shape}, {s['nsamples']} "
                                f"samples expected); re-create the dataset with: {self.hint} --overwrite")
            tables.append(t)
        idx = np.concatenate(tables) if tables else np.zeros((0, len(self.fields), 2), np.int64)
        starts = np.concatenate([[0], np.cumsum([s["nsamples"] for s in self.shards])]).astype(np.int64)
        return idx, starts
