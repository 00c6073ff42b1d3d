"""Run metrics: TensorBoard events plus a `metrics.jsonl` line per log step (what tests and `lactron status` read).

Only global rank 0 writes. On resume, both are cut back to the resumed step (TensorBoard's `purge_step`, and a
rewrite of the JSONL), so the history shows each step once even after a crash re-ran some steps.
"""
from __future__ import annotations

import json
import os
from typing import Optional


class MetricsWriter:
    def __init__(self, run_dir: str, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.tb_dir = os.path.join(run_dir, "tb")
        self.jsonl = os.path.join(run_dir, "metrics.jsonl")
        # purge_step drops events with step >= it: everything after the checkpoint we resumed from.
        self.tb = SummaryWriter(self.tb_dir, purge_step=resume_step + 1 if resume_step > 0 else None)
        _truncate_jsonl(self.jsonl, resume_step)

    def scalars(self, step: int, values: dict[str, float], record: Optional[dict] = None) -> None:
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        if record is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")

    def flush(self) -> None:
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def _truncate_jsonl(path: str, resume_step: int) -> None:
    """Drop records of steps > resume_step: they will be re-run from the checkpoint."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def summarize_fw_stats(stats: dict) -> dict[str, float]:
    """Nested per-layer fast-weight stats {layer0: {update_norm/w0: x, ...}} -> flat TensorBoard tags."""
    out = {}
    for layer, d in stats.items():
        for k, v in d.items():
            out[f"fast_weight/{layer}/{k}"] = float(v)
    return out
