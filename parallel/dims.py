"""The parallel layout and its process groups, created once and passed to whoever communicates.

World = TP x CP x DP in Megatron order: rank = tp + cp*TP + dp*TP*CP (TP innermost, so a TP group is a block of
adjacent ranks and stays inside a node). The groups come from megatron-core's `parallel_state` so that its
tensor-parallel layers and ours agree on who talks to whom; we read them out once into `ProcessGroups` and pass
that object explicitly instead of reaching for module globals.

Groups and what reduces over them:
- `tp`: activations of sharded layers (all-reduce / all-gather inside a block);
- `cp`: the sequence shards of one sample (attention halos, fast-weight gradient sums);
- `dp`: replicas that see different samples;
- `dp_cp`: weight gradients (and ZeRO shards): every rank that holds the same TP shard of the weights.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


class LayoutError(ValueError):
    """A parallel layout that does not fit the world or the model; the message names the numbers."""


@dataclass(frozen=True)
class ParallelDims:
    tp: int
    cp: int
    dp: int

    @classmethod
    def from_world(cls, world: int, tp: int = 1, cp: int = 1) -> "ParallelDims":
        if tp < 1 or cp < 1:
            raise LayoutError(f"tp and cp must be >= 1, got tp={tp} cp={cp}")
        if world % (tp * cp):
            raise LayoutError(f"world size {world} is not divisible by tp x cp = {tp} x {cp} = {tp * cp}")
        return cls(tp=tp, cp=cp, dp=world // (tp * cp))

    @property
    def world(self) -> int:
        return self.tp * self.cp * self.dp

    def coords(self, rank: int) -> tuple[int, int, int]:
        """Global rank -> (tp_rank, cp_rank, dp_rank)."""
        return rank % self.tp, (rank // self.tp) % self.cp, rank // (self.tp * self.cp)

    def rank_of(self, tp_rank: int, cp_rank: int, dp_rank: int) -> int:
        return tp_rank + cp_rank * self.tp + dp_rank * self.tp * self.cp


@dataclass
class ProcessGroups:
    dims: ParallelDims
    rank: int
    tp_rank: int
    cp_rank: int
    dp_rank: int
    tp_group: Any
    cp_group: Any
    dp_group: Any
    dp_cp_group: Any

    @property
    def is_first(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int, backend: Optional[str] = None) -> None:
    """init_process_group from the env (MASTER_ADDR/PORT, RANK, WORLD_SIZE) with an explicit timeout: a dead peer
    must surface in `timeout_s` seconds, not gloo's default 30 minutes."""
    if dist.is_initialized():
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def init_process_groups(dims: ParallelDims, timeout_s: int) -> ProcessGroups:
    """Create every group once through megatron-core's parallel_state (collective: all ranks must call it)."""
    from megatron.core import parallel_state as ps

    world, rank = dist.get_world_size(), dist.get_rank()
    if world != dims.world:
        raise LayoutError(f"the process group has {world} ranks but the layout tp x cp x dp = "
                          f"{dims.tp} x {dims.cp} x {dims.dp} needs {dims.world}")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=dims.tp, context_parallel_size=dims.cp,
        distributed_timeout_minutes=max(1, -(-timeout_s // 60)), order="tp-cp-ep-dp-pp",
        create_gloo_process_groups=False)
    tp_rank, cp_rank, dp_rank = dims.coords(rank)
    # Our rank arithmetic and megatron's must agree, or data would be split along the wrong axis.
    got = (ps.get_tensor_model_parallel_rank(), ps.get_context_parallel_rank(), ps.get_data_parallel_rank())
    if got != (tp_rank, cp_rank, dp_rank):
        raise LayoutError(f"megatron-core placed rank {rank} at (tp, cp, dp) = {got}, expected "
                          f"{(tp_rank, cp_rank, dp_rank)}")
    return ProcessGroups(
        dims=dims, rank=rank, tp_rank=tp_rank, cp_rank=cp_rank, dp_rank=dp_rank,
        tp_group=ps.get_tensor_model_parallel_group(), cp_group=ps.get_context_parallel_group(),
        dp_group=ps.get_data_parallel_group(), dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True))


def destroy_process_groups() -> None:
    try:
        from megatron.core import parallel_state as ps
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
    except Exception:  # noqa: BLE001 - teardown must not mask the original error
        pass
    if dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
