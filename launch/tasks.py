"""Tasks: what the generic training loop needs to know about a workload.

A task builds the model, the data loader for a split at a cursor, and turns a loader batch into the keyword
arguments of the model's forward (which returns the loss). The loop in `trainer.py` owns everything else
(engine, steps, logging, checkpoints), so a new workload (the video diffusion model) is a new Task, not a new loop.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lactron.parallel.dims import ProcessGroups

from .config import Config


class Task(Protocol):
    def build_model(self) -> nn.Module: ...

    def build_loader(self, split: str, consumed_samples: int, num_workers: int): ...

    def model_inputs(self, batch: dict) -> dict: ...

    def tokens_per_sample(self) -> int: ...


class LMTask:
    """Next-token prediction on packed token sequences (documents separated by EOS)."""

    def __init__(self, cfg: Config, pg: ProcessGroups):
        self.cfg, self.pg = cfg, pg
        self.eos_id = None

    def build_model(self) -> nn.Module:
        from lactron.model.lm import LaCTLM

        return LaCTLM(self.cfg.model)

    def build_loader(self, split: str, consumed_samples: int, num_workers: int):
        from lactron.data.loader import build_token_loader

        d = self.cfg.data
        loader = build_token_loader(
            d.path, split, seq_len=d.seq_len, micro_batch_size=d.micro_batch_size,
            global_batch_size=self.cfg.train.global_batch_size, dp_rank=self.pg.dp_rank, dp_size=self.pg.dims.dp,
            seed=d.seed, consumed_samples=consumed_samples, num_workers=num_workers, verify=d.verify)
        self.eos_id = loader.eos_id
        return loader

    def model_inputs(self, batch: dict) -> dict:
        from lactron.data.packing import segment_ids

        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        doc_ids, positions = segment_ids(inputs, self.eos_id)
        return {"input_ids": inputs, "targets": targets, "doc_ids": doc_ids, "positions": positions}

    def tokens_per_sample(self) -> int:
        return self.cfg.data.seq_len


def build_task(cfg: Config, pg: ProcessGroups) -> Task:
    kind = getattr(cfg.model, "kind", "lm")
    if kind == "lm":
        return LMTask(cfg, pg)
    if kind == "video":
        from .video_task import VideoTask

        return VideoTask(cfg, pg)
    raise ValueError(f"model.kind={kind!r} has no task")


def inputs_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
