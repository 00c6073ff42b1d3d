"""The run config: one YAML file -> one typed, validated `Config`.

Sections: `run`, `model`, `data`, `optim`, `train`, `parallel`, `cluster`. Every section is a dataclass whose fields
carry a docstring; `lactron train CONFIG key.sub=value ...` applies overrides to the raw YAML before validation, so
an override is checked exactly like the file. Cross-section rules (the parallel layout must divide the world, the
batch must divide over DP ranks, heads over TP ranks) live in `Config.__post_init__` with messages that name the
clashing numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Optional

import yaml

from lactron.model.config import LMConfig

from .schema import ConfigError, apply_overrides, from_dict, read_yaml, to_dict


@dataclass
class RunConfig:
    name: str = "lactron"
    dir: str = ""
    """Run directory (resolved config, TensorBoard events, checkpoints, metrics); default runs/<name>."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty name without '/', got {self.name!r}")
        if not self.dir:
            self.dir = os.path.join("runs", self.name)


@dataclass
class DataConfig:
    path: str = "runs/data/stdlib"
    """A dataset written by `lactron data prepare-text` (webdataset shards + index.json)."""
    seq_len: int = 512
    micro_batch_size: int = 4
    """Sequences per forward/backward on one DP rank."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = read in the training process)."""
    seed: int = 1234
    """Seed of the sample order (a permutation per epoch)."""
    verify: Literal["size", "full"] = "size"
    """Shard check before training: file sizes (fast) or full sha256."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global gradient-norm clipping (0 disables)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("optim.warmup_steps and optim.grad_clip must be >= 0")


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps; re-running with a larger value continues a finished run."""
    global_batch_size: int = 16
    """Sequences per optimizer step over all DP ranks (= micro_batch x DP x gradient accumulation)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    zero_stage: int = 1
    seed: int = 0
    """Seed of the parameter init (identical on every rank)."""
    log_every: int = 10
    checkpoint_every: int = 100
    keep_last: int = 3
    """Checkpoints kept (older ones are deleted after a newer one is verified)."""
    eval_every: int = 0
    """Validation loss every N steps on the `val` split (0 = never)."""
    eval_batches: int = 4
    exit_interval: int = 0
    """Stop this invocation (after checkpointing) when the step is a multiple of N; re-run to continue.
    Megatron's --exit-interval: for time-limited allocations (0 = run to train.steps)."""
    fw_stats_every: int = 0
    """Per-layer fast-weight statistics to TensorBoard every N steps (0 = at every log step)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.global_batch_size < 1:
            raise ValueError("train.steps and train.global_batch_size must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("train.log_every and train.checkpoint_every must be >= 1")
        if self.exit_interval < 0:
            raise ValueError(f"train.exit_interval must be >= 0, got {self.exit_interval}")
        if self.keep_last < 1:
            raise ValueError(f"train.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel size (innermost; kept inside a node)."""
    cp: int = 1
    """Context-parallel size (the sequence is split over CP ranks)."""
    cp_strategy: Literal["heads", "chunks", "scan"] = "heads"
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        if self.tp < 1 or self.cp < 1:
            raise ValueError(f"parallel.tp and parallel.cp must be >= 1, got tp={self.tp} cp={self.cp}")


@dataclass
class ClusterConfig:
    address: Optional[str] = None
    """Address of an existing Ray cluster (e.g. 'auto' or 'ray://host:10001'); null starts a local one."""
    num_workers: int = 2
    """Training processes (= TP x CP x DP)."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for every worker."""
    timeout_s: int = 300
    """Process-group timeout: a dead peer is detected after this long instead of gloo's 30 minutes."""
    dashboard: bool = False
    """Start the Ray dashboard with a local cluster (off by default; binds to 127.0.0.1)."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"cluster.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("cluster.cpus_per_worker must be > 0 and cluster.gpus_per_worker >= 0")
        if self.timeout_s < 10:
            raise ValueError(f"cluster.timeout_s must be >= 10 seconds, got {self.timeout_s}")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: LMConfig = field(default_factory=LMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def world_size(self) -> int:
        return self.cluster.num_workers

    @property
    def dp(self) -> int:
        return self.world_size // (self.parallel.tp * self.parallel.cp)

    @property
    def grad_accum(self) -> int:
        return self.train.global_batch_size // (self.data.micro_batch_size * self.dp)

    def __post_init__(self) -> None:
        p, c = self.parallel, self.cluster
        mp = p.tp * p.cp
        if c.num_workers % mp:
            raise ValueError(
                f"cluster.num_workers={c.num_workers} is not divisible by parallel.tp x parallel.cp = "
                f"{p.tp} x {p.cp} = {mp}")
        if p.tp > 1 or p.cp > 1:
            raise ValueError(
                f"parallel.tp={p.tp}, parallel.cp={p.cp}: tensor and context parallelism are not available in "
                f"this version yet; use tp: 1, cp: 1 (data parallelism over {c.num_workers} workers)")
        per_step = self.data.micro_batch_size * self.dp
        if self.train.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size={self.train.global_batch_size} is not divisible by "
                f"data.micro_batch_size x DP = {self.data.micro_batch_size} x {self.dp} = {per_step}")
        if self.model.n_heads % p.tp:
            raise ValueError(f"model.n_heads={self.model.n_heads} is not divisible by parallel.tp={p.tp}")
        if self.train.precision == "bf16" and self.train.zero_stage == 0:
            # ZeRO-0 + bf16 all-reduces gradients in bf16 (DeepSpeed's DDP_BFLOAT16 path): a silent accuracy loss.
            raise ValueError("train.precision=bf16 needs train.zero_stage >= 1 (ZeRO-0 would reduce grads in bf16)")


def load_config(path: str, overrides: Optional[list[str]] = None) -> Config:
    """Read YAML (safe loader), apply `key.sub=value` overrides, build and validate the Config."""
    raw = read_yaml(path)
    raw = apply_overrides(raw, list(overrides or []))
    return from_dict(Config, raw)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = ["Config", "ConfigError", "load_config", "config_to_yaml", "RunConfig", "DataConfig", "OptimConfig",
           "TrainConfig", "ParallelConfig", "ClusterConfig"]
