"""`lactron status RUN_DIR`: what a user asks of a long run — where is it, is its checkpoint good, did it crash."""
from __future__ import annotations

import json
import os
import time

from lactron.parallel.checkpoint import find_resumable, list_checkpoints

from .metrics import read_metrics
from .schema import ConfigError


def run_status(run_dir: str) -> str:
    if not os.path.isdir(run_dir):
        raise ConfigError(f"run directory {run_dir!r} does not exist")
    lines = [f"run: {run_dir}"]
    state = {}
    sp = os.path.join(run_dir, "run_state.json")
    if os.path.exists(sp):
        with open(sp) as f:
            state = json.load(f)
    metrics = read_metrics(run_dir)
    last = next((m for m in reversed(metrics) if "loss" in m), None)
    if last:
        lines.append(f"step: {last['step']}  loss: {last['loss']:.4f}  tokens: {last.get('tokens', 0):,}  "
                     f"lr: {last.get('lr', float('nan')):.2e}")
    else:
        lines.append("step: no training step logged yet")
    root = os.path.join(run_dir, "checkpoints")
    good = find_resumable(root, full=False)
    all_ckpts = list_checkpoints(root)
    if good:
        lines.append(f"last good checkpoint: {good.name} (step {good.manifest['step']}, "
                     f"{len(all_ckpts)} kept) in {root}")
    else:
        lines.append("last good checkpoint: none")
    lines.append(f"status: {state.get('status', 'unknown')}  attempts: {state.get('attempts', 0)}  "
                 f"restarts: {state.get('restarts', 0)}")
    if state.get("updated"):
        lines.append(f"updated: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state['updated']))}")
    lines.append(f"last error: {state.get('last_error') or 'none'}")
    return "\n".join(lines)
