"""Bad input: one clear `error:` line, a non-zero exit, no traceback — for each kind of mistake."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs/lm_tiny.yaml")


def lactron(*args):
    return subprocess.run([sys.executable, "-m", "lactron.launch.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args,message", [
    (["model.fast_weight.chunk_sise=64"],
     "error: unknown config key 'model.fast_weight.chunk_sise'; did you mean 'model.fast_weight.chunk_size'?"),
    (["train.steps=many"], "error: train.steps: expected an integer, got str 'many'"),
    (["data.path=/nonexistent/shards"], "error: data.path '/nonexistent/shards' does not exist"),
    (["cluster.num_workers=3"], "error: train.global_batch_size=8 is not divisible by data.micro_batch_size x DP"),
    (["cluster.num_workers=3", "parallel.tp=2"],
     "error: cluster.num_workers=3 is not divisible by parallel.tp x parallel.cp = 2 x 1 = 2"),
], ids=["unknown-key", "wrong-type", "missing-data", "batch-vs-dp", "layout-vs-world"])
def test_train_rejects_bad_input(args, message):
    r = lactron("train", TINY, *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


def test_help_on_every_command():
    for args in (["--help"], ["train", "--help"], ["data", "--help"], ["data", "prepare-text", "--help"],
                 ["status", "--help"]):
        r = lactron(*args)
        assert r.returncode == 0 and "usage: lactron" in r.stdout, (args, r.stderr)


def test_status_of_missing_run():
    r = lactron("status", "/nonexistent/run")
    assert r.returncode == 2 and r.stderr.startswith("error: run directory '/nonexistent/run' does not exist")
