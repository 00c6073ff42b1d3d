"""`lactron train` end to end on a local Ray cluster with 2 DeepSpeed workers: the loss falls, TensorBoard gets the
promised scalars, and N steps + a fresh process + N steps equals 2N uninterrupted steps bitwise."""
import json
import os
import subprocess
import sys

import pytest

from lactron.data.text_shards import prepare_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.window=32",
         "model.fast_weight.chunk_size=32", "model.fast_weight.n_heads=2", "data.seq_len=128",
         "data.micro_batch_size=2", "train.global_batch_size=8", "optim.warmup_steps=2", "train.log_every=1",
         "train.eval_every=0", "cluster.num_workers=2", "cluster.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "stdlib"
    import sysconfig
    prepare_text(out, [os.path.join(sysconfig.get_paths()["stdlib"], "json")], seq_len=128, samples_per_shard=16,
                 progress=False)
    return str(out)


def train(run_dir, dataset, *extra):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "lactron.launch.cli", "train", os.path.join(ROOT, "configs/lm_tiny.yaml"),
           *SMALL, f"data.path={dataset}", f"run.dir={run_dir}", "--no-progress", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.slow
def test_exact_resume_and_tensorboard(tmp_path, dataset):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    out = train(full, dataset, "train.steps=8", "train.checkpoint_every=4")
    assert "TensorBoard logs:" in out and "tensorboard --logdir" in out
    # The same command twice: the first invocation stops after step 4 as if killed after its checkpoint.
    out = train(split, dataset, "train.steps=8", "train.checkpoint_every=4", "train.exit_interval=4")
    assert "stopping at step 4" in out
    out = train(split, dataset, "train.steps=8", "train.checkpoint_every=4", "train.exit_interval=4")
    assert "resumed from step_00000004" in out
    a, b = losses(full), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert a == b, f"resume is not bitwise exact:\n{a}\n{b}"  # float equality, not approx
    assert a[8] < a[1] - 0.5, f"loss did not fall: {a}"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(os.path.join(split, "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for t in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
              "fast_weight/layer1/update_norm/w0", "fast_weight/layer0/lr_mean/w2", "fast_weight/layer0/lr_std/w1"):
        assert t in tags, t
    steps = [e.step for e in ea.Scalars("train/loss")]
    assert steps == list(range(1, 9))  # each step once across the two processes
    status = subprocess.run([sys.executable, "-m", "lactron.launch.cli", "status", split], capture_output=True,
                            text=True)
    assert "last good checkpoint: step_00000008" in status.stdout and "attempts: 2" in status.stdout
