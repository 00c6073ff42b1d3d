"""Sharded checkpoints that resume exactly and never destroy the last good one (DESIGN §5).

Layout of `<root>/` (root = <run_dir>/checkpoints):

    step_00000100/                      one directory per saved step
        step_00000100/...               DeepSpeed's per-rank model / ZeRO optimizer shards (its own format)
        rank_00000.json ...             per-rank state: data cursor, RNG states (JSON: safe to read)
        manifest.json                   step, tokens, layout, resolved config, every file's size + sha256
    latest                              text: the name of the newest verified checkpoint (written last)

A save writes everything into `.tmp.step_N/`, hashes the files (spread over all ranks), writes the manifest, renames
the directory to `step_N` (atomic on a POSIX filesystem) and only then replaces `latest` (temp file + os.replace).
A crash at any point leaves the previous checkpoint and `latest` untouched; stale `.tmp.*` directories are removed
at the next start. Loading verifies sizes and checksums first and falls back, with a warning, to the newest older
checkpoint that verifies.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from .dims import ProcessGroups

log = logging.getLogger("lactron.checkpoint")

FORMAT = "lactron-checkpoint-v1"
_TMP = ".tmp."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256_file(path: str, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _fsync_write(path: str, text: str) -> None:
    """Write-then-rename so a reader never sees a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- RNG state (JSON)

def rng_state() -> dict:
    st = {"python": _jsonable(random.getstate()),
          "numpy": _jsonable(np.random.get_state()),
          "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        st["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(_tuplify(st["python"]))
    np_state = st["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(st["torch"])), dtype=torch.uint8))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in st["cuda"]])


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------- verification

@dataclass
class Verified:
    name: str
    manifest: dict


def list_checkpoints(root: str) -> list[str]:
    """Finished checkpoint directories, newest first."""
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith("step_") and os.path.isdir(os.path.join(root, n))]
    return sorted(names, reverse=True)


def verify_checkpoint(path: str, full: bool = True) -> dict:
    """Check the manifest and every file it lists; returns the manifest or raises CheckpointError."""
    mpath = os.path.join(path, "manifest.json")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no manifest.json (an interrupted save?)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for rel, meta in manifest["files"].items():
        fp = os.path.join(path, rel)
        if not os.path.isfile(fp):
            raise CheckpointError(f"{fp}: missing")
        size = os.path.getsize(fp)
        if size != meta["size"]:
            raise CheckpointError(f"{fp}: {size} bytes, manifest says {meta['size']} (truncated?)")
        if full and sha256_file(fp) != meta["sha256"]:
            raise CheckpointError(f"{fp}: sha256 mismatch (corrupted)")
    return manifest


def find_resumable(root: str, full: bool = True) -> Optional[Verified]:
    """The newest checkpoint that verifies. `latest` is preferred; a bad one is skipped with a warning."""
    candidates = list_checkpoints(root)
    latest_file = os.path.join(root, "latest")
    if os.path.isfile(latest_file):
        with open(latest_file) as f:
            latest = f.read().strip()
        # Anything newer than `latest` was never committed; start the search at `latest`.
        candidates = [n for n in candidates if n <= latest]
    for name in candidates:
        try:
            return Verified(name, verify_checkpoint(os.path.join(root, name), full=full))
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", name, e)
            print(f"warning: checkpoint {name} is unusable ({e}); trying an older one", flush=True)
    return None


# ---------------------------------------------------------------------------------------------- save / load

class Checkpointer:
    """Collective save/load of a DeepSpeed engine plus lactron's manifest. Every rank calls every method."""

    def __init__(self, root: str, pg: ProcessGroups, keep_last: int = 3):
        self.root, self.pg, self.keep_last = root, pg, keep_last
        if pg.is_first:
            os.makedirs(root, exist_ok=True)
            for n in os.listdir(root):  # leftovers of saves that died midway: never valid, never used
                if n.startswith(_TMP):
                    shutil.rmtree(os.path.join(root, n), ignore_errors=True)
        dist.barrier()

    def save(self, engine, step: int, manifest_extra: dict, rank_state: dict) -> str:
        name = step_name(step)
        tmp_name = _TMP + name
        tmp = os.path.join(self.root, tmp_name)
        t0 = time.time()
        engine.save_checkpoint(self.root, tag=tmp_name, save_latest=False)  # DeepSpeed: root/tag/...
        rank_file = os.path.join(tmp, f"rank_{self.pg.rank:05d}.json")
        with open(rank_file, "w") as f:
            json.dump({"rank": self.pg.rank, "rng": rng_state(), **rank_state}, f)
        dist.barrier()
        files = self._hash_all(tmp)
        if self.pg.is_first:
            manifest = {"format": FORMAT, "name": name, "step": step, "time": time.time(),
                        "layout": {"tp": self.pg.dims.tp, "cp": self.pg.dims.cp, "dp": self.pg.dims.dp},
                        "deepspeed_tag": tmp_name, "files": files, **manifest_extra}
            _fsync_write(os.path.join(tmp, "manifest.json"), json.dumps(manifest, indent=1))
            verify_checkpoint(tmp, full=False)
            final = os.path.join(self.root, name)
            if os.path.exists(final):  # a re-save of the same step (after a restart): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_write(os.path.join(self.root, "latest"), name + "\n")
            self._retain()
            log.info("saved checkpoint %s in %.1fs", name, time.time() - t0)
        dist.barrier()
        return os.path.join(self.root, name)

    def _hash_all(self, path: str) -> dict:
        """Hash every file of the checkpoint, spreading the files over ranks (the save is I/O bound)."""
        rels = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
        mine = {r: {"size": os.path.getsize(os.path.join(path, r)), "sha256": sha256_file(os.path.join(path, r))}
                for i, r in enumerate(rels) if i % self.pg.dims.world == self.pg.rank}
        gathered: list = [None] * self.pg.dims.world
        dist.all_gather_object(gathered, mine)
        return {k: v for part in gathered for k, v in sorted(part.items())}

    def _retain(self) -> None:
        for old in list_checkpoints(self.root)[self.keep_last:]:
            shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)

    def resolve(self) -> Optional[Verified]:
        """Rank 0 picks the newest good checkpoint and tells everyone (all ranks must load the same one)."""
        box = [find_resumable(self.root) if self.pg.is_first else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def load(self, engine, found: Verified) -> dict:
        """Load engine shards (model, optimizer, LR schedule) and this rank's state; restores RNG states."""
        path = os.path.join(self.root, found.name)
        layout = found.manifest["layout"]
        mine = {"tp": self.pg.dims.tp, "cp": self.pg.dims.cp, "dp": self.pg.dims.dp}
        if layout != mine:
            raise CheckpointError(f"{path} was saved with layout {layout} but this run uses {mine}; "
                                  f"resharding to a different layout is not supported yet")
        # DeepSpeed reads <root>/<tag>/; our directory name is the tag now that the save is committed.
        load_path, _ = engine.load_checkpoint(self.root, tag=found.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {path}")
        with open(os.path.join(path, f"rank_{self.pg.rank:05d}.json")) as f:
            state = json.load(f)
        set_rng_state(state.pop("rng"))
        return state
