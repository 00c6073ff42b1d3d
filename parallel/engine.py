"""The DeepSpeed engine over our process groups.

DeepSpeed learns the layout through an `mpu` object: model-parallel = TP (its `mp_rank_XX` checkpoint files),
data-parallel = DP. ZeRO shards optimizer state (stage 1), gradients (2) and parameters (3) over the DP group.
TP-sharded parameters carry `tensor_model_parallel=True` so DeepSpeed's global grad norm counts them once per TP
shard instead of treating them as replicated.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable

import torch
from torch import nn

from .dims import ProcessGroups


class MPU:
    """DeepSpeed's `mpu` protocol answered from ProcessGroups (no megatron globals)."""

    def __init__(self, pg: ProcessGroups):
        self.pg = pg

    def get_model_parallel_rank(self) -> int:
        return self.pg.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.pg.dims.tp

    def get_model_parallel_group(self):
        return self.pg.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_data_parallel_rank(self) -> int:
        return self.pg.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.pg.dims.dp

    def get_data_parallel_group(self):
        return self.pg.dp_group

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not gains/biases/offsets: a 1-D parameter, or one flagged `no_weight_decay`, is exempt."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or getattr(p, "no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def skip_cpu_shm_build() -> None:
    """DeepSpeed JIT-compiles an inference-only shared-memory all-reduce op on CPU (~60 s on 2 cores) at init.
    Training never uses it (research/deps.md §2), so stub the builder out."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def build_engine(model: nn.Module, ds_config: dict, pg: ProcessGroups, param_groups: Iterable[dict],
                 lr_scheduler=None):
    """deepspeed.initialize with our mpu; returns (engine, optimizer, lr_scheduler). `lr_scheduler` may be a
    callable taking the optimizer DeepSpeed builds (its state is saved in the engine checkpoint)."""
    import deepspeed

    if not torch.cuda.is_available():
        skip_cpu_shm_build()
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=list(param_groups), config=ds_config, mpu=MPU(pg), lr_scheduler=lr_scheduler)
    return engine, optimizer, scheduler
