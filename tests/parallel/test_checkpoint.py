"""Checkpoints: atomic commit, verification, fallback to the last good one, retention — with a real DeepSpeed
engine on a 2-rank gloo group."""
import json
import os

import pytest
import torch

from lactron.parallel.checkpoint import Checkpointer, CheckpointError, find_resumable, list_checkpoints, \
    verify_checkpoint
from lactron.parallel.dims import ParallelDims, init_process_groups
from lactron.parallel.engine import build_engine, weight_decay_groups
from lactron.parallel.spawn import spawn_ranks

DS = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
      "zero_optimization": {"stage": 1}, "steps_per_print": 10 ** 9}


def _engine(pg):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    engine, _, _ = build_engine(model, DS, pg, weight_decay_groups(model, 0.0))
    return engine


def _step(engine, rank, step):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(2, 8, generator=g)
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
    return loss.item()


def _train_and_save(rank, root, steps, keep_last, fail_at=None):
    pg = init_process_groups(ParallelDims.from_world(2), timeout_s=60)
    engine = _engine(pg)
    ck = Checkpointer(root, pg, keep_last=keep_last)
    losses = []
    for s in range(1, steps + 1):
        losses.append(_step(engine, rank, s))
        if s == fail_at:
            # Die in the middle of a save: DeepSpeed's shards written, nothing committed.
            engine.save_checkpoint(root, tag=f".tmp.step_{s:08d}", save_latest=False)
            return losses
        ck.save(engine, s, {"consumed_samples": 4 * s}, {"data": {"cursor": s}})
    return losses


def _resume(rank, root, more):
    pg = init_process_groups(ParallelDims.from_world(2), timeout_s=60)
    engine = _engine(pg)
    ck = Checkpointer(root, pg)
    found = ck.resolve()
    state = ck.load(engine, found)
    start = found.manifest["step"]
    return found.name, state["data"], [_step(engine, rank, s) for s in range(start + 1, start + more + 1)]


@pytest.mark.slow
def test_save_resume_retention_and_integrity(tmp_path):
    root = str(tmp_path / "ck")
    full = spawn_ranks(_train_and_save, 2, root, 4, 2)          # 4 steps, checkpoint each, keep 2
    assert list_checkpoints(root) == ["step_00000004", "step_00000003"]  # keep-last-N retention
    assert open(os.path.join(root, "latest")).read().strip() == "step_00000004"
    manifest = verify_checkpoint(os.path.join(root, "step_00000004"))
    assert manifest["layout"] == {"tp": 1, "cp": 1, "dp": 2} and manifest["consumed_samples"] == 16
    assert any(f.endswith("optim_states.pt") for f in manifest["files"])  # ZeRO shards are covered

    # Exact resume from step 3: steps 4 and 5 reproduce the uninterrupted run bitwise.
    reference = spawn_ranks(_train_and_save, 2, str(tmp_path / "ref"), 5, 5)
    os.remove(os.path.join(root, "step_00000004", "manifest.json"))  # make step 4 unusable -> fall back to 3
    res = spawn_ranks(_resume, 2, root, 2)
    for rank, (name, data, losses) in enumerate(res):
        assert name == "step_00000003" and data == {"cursor": 3}
        assert losses == reference[rank][3:5]
    assert full[0][:3] == reference[0][:3]


@pytest.mark.slow
def test_interrupted_save_keeps_previous_and_is_cleaned(tmp_path):
    root = str(tmp_path / "ck")
    spawn_ranks(_train_and_save, 2, root, 3, 5, 3)  # steps 1, 2 saved; dies while saving step 3
    assert os.path.isdir(os.path.join(root, ".tmp.step_00000003"))
    assert find_resumable(root).name == "step_00000002"
    res = spawn_ranks(_resume, 2, root, 1)  # a new Checkpointer removes the half-written save
    assert res[0][0] == "step_00000002" and not os.path.exists(os.path.join(root, ".tmp.step_00000003"))


def test_corruption_is_detected_and_skipped(tmp_path, capsys):
    root = tmp_path / "ck"
    for step, payload in ((1, b"a" * 100), (2, b"b" * 100)):
        d = root / f"step_{step:08d}"
        d.mkdir(parents=True)
        (d / "shard.pt").write_bytes(payload)
        import hashlib
        files = {"shard.pt": {"size": 100, "sha256": hashlib.sha256(payload).hexdigest()}}
        (d / "manifest.json").write_text(json.dumps({"format": "lactron-checkpoint-v1", "step": step,
                                                     "files": files}))
    (root / "latest").write_text("step_00000002\n")
    assert find_resumable(str(root)).name == "step_00000002"
    # Same size, one byte flipped: only the checksum can tell.
    p = root / "step_00000002" / "shard.pt"
    p.write_bytes(b"b" * 99 + b"c")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        verify_checkpoint(str(root / "step_00000002"))
    assert find_resumable(str(root)).name == "step_00000001"
    assert "step_00000002 is unusable" in capsys.readouterr().out
    # Truncated.
    (root / "step_00000001" / "shard.pt").write_bytes(b"a" * 50)
    with pytest.raises(CheckpointError, match="50 bytes, manifest says 100"):
        verify_checkpoint(str(root / "step_00000001"))
    assert find_resumable(str(root)) is None
