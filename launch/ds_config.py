"""Translate the run config into a DeepSpeed config dict (the only place that knows DeepSpeed's key names)."""
from __future__ import annotations

from .config import Config


def deepspeed_config(cfg: Config) -> dict:
    o, t = cfg.optim, cfg.train
    schedule = {
        "type": "WarmupCosineLR",
        "params": {"total_num_steps": t.steps, "warmup_num_steps": o.warmup_steps, "warmup_type": "linear",
                   "warmup_min_ratio": 0.0, "cos_min_ratio": o.min_lr_ratio},
    } if o.schedule == "cosine" else {
        "type": "WarmupLR",
        "params": {"warmup_min_lr": 0.0, "warmup_max_lr": o.lr, "warmup_num_steps": o.warmup_steps,
                   "warmup_type": "linear"},
    }
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.data.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "optimizer": {"type": "AdamW", "params": {
            "lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay,
            # torch's own AdamW: DeepSpeed's fused CPU/CUDA Adam needs a compiled op we do not build.
            "torch_adam": True, "adam_w_mode": True}},
        "scheduler": schedule,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        "steps_per_print": 10 ** 9,  # our own logging; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }
