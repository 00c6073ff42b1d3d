"""Translate the run config into a DeepSpeed config dict (the only place that knows DeepSpeed's key names)."""
from __future__ import annotations

from .config import Config


def deepspeed_config(cfg: Config) -> dict:
    o, t = cfg.optim, cfg.train
    # No "scheduler" entry: the LR schedule is lactron's own (launch/lr_schedule.py), passed to
    # deepspeed.initialize as a client scheduler (DeepSpeed's WarmupCosineLR starts at lr=0 and rejects 0 warmup).
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.data.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "optimizer": {"type": "AdamW", "params": {
            "lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay,
            # torch's own AdamW: DeepSpeed's fused CPU/CUDA Adam needs a compiled op we do not build.
            "torch_adam": True, "adam_w_mode": True}},
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        "steps_per_print": 10 ** 9,  # our own logging; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }
