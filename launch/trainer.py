"""The training loop that runs inside every worker process (one per rank).

    init torch.distributed (gloo on CPU, nccl on GPU, explicit timeout) -> megatron-core process groups ->
    model (same seed on every rank) -> DeepSpeed engine (ZeRO, precision, clipping, LR schedule) ->
    resume from the newest verified checkpoint -> data loader at the saved cursor -> steps -> checkpoints.

Nothing here knows about Ray: a `report` callback carries progress to whoever launched the workers, so the same
function runs under torchrun or in a test's spawned processes.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from lactron.parallel.checkpoint import Checkpointer
from lactron.parallel.dims import ParallelDims, ProcessGroups, destroy_process_groups, init_distributed, \
    init_process_groups
from lactron.parallel.engine import build_engine, weight_decay_groups

from .config import Config, config_to_yaml
from .ds_config import deepspeed_config
from .lr_schedule import make_scheduler
from .metrics import MetricsWriter, summarize_fw_stats
from .tasks import build_task, inputs_to

log = logging.getLogger("lactron.train")
Report = Callable[[dict], None]


def run_training(cfg: Config, report: Optional[Report] = None) -> dict:
    """Entry point of one rank. Env must hold MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE."""
    torch.set_num_threads(max(1, int(cfg.cluster.cpus_per_worker)))
    init_distributed(cfg.cluster.timeout_s)
    try:
        dims = ParallelDims.from_world(dist.get_world_size(), cfg.parallel.tp, cfg.parallel.cp)
        pg = init_process_groups(dims, cfg.cluster.timeout_s)
        return Trainer(cfg, pg, report).fit()
    finally:
        destroy_process_groups()


class Trainer:
    def __init__(self, cfg: Config, pg: ProcessGroups, report: Optional[Report] = None):
        self.cfg, self.pg, self.report = cfg, pg, report
        self.run_dir = cfg.run.dir
        self.task = build_task(cfg, pg)
        torch.manual_seed(cfg.train.seed)  # identical init on every rank; data order has its own seed
        model = self.task.build_model()
        self.engine, self.optimizer, self.scheduler = build_engine(
            model, deepspeed_config(cfg), pg, weight_decay_groups(model, cfg.optim.weight_decay),
            lr_scheduler=make_scheduler(cfg.optim, cfg.train.steps))
        self.ckpt = Checkpointer(os.path.join(self.run_dir, "checkpoints"), pg, cfg.train.keep_last)
        self.step, self.consumed_samples, data_state = 0, 0, None
        found = self.ckpt.resolve()
        if found is not None:
            state = self.ckpt.load(self.engine, found)
            self.step = found.manifest["step"]
            self.consumed_samples = found.manifest["consumed_samples"]
            data_state = state.get("data")
            self._say(f"resumed from {found.name} (step {self.step})")
        self.loader = self.task.build_loader("train", self.consumed_samples, cfg.data.num_workers)
        if data_state is not None:
            self.loader.check_state(data_state)
        self.writer = MetricsWriter(self.run_dir, self.step) if pg.is_first else None

    # ------------------------------------------------------------------------------------------------ helpers
    def _say(self, msg: str) -> None:
        if self.pg.is_first:
            print(f"[lactron] {msg}", flush=True)
            if self.report:
                self.report({"message": msg})

    def _batch(self, batch: dict) -> dict:
        return inputs_to(self.task.model_inputs(batch), self.engine.device)

    def _dp_mean(self, x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t, group=self.pg.dp_group)
        return t.item() / self.pg.dims.dp

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> dict:
        cfg = self.cfg
        steps, accum = cfg.train.steps, cfg.grad_accum
        tokens_per_step = cfg.train.global_batch_size * self.task.tokens_per_sample()
        if self.step >= steps:
            self._say(f"run already complete at step {self.step} (train.steps={steps})")
            return self._summary(None)
        self._say(f"training steps {self.step + 1}..{steps}: {self.engine.module.num_params():,} params, "
                  f"dp={self.pg.dims.dp} micro={cfg.data.micro_batch_size} accum={accum}, "
                  f"{tokens_per_step:,} tokens/step")
        it = iter(self.loader)
        last = None
        t_last, steps_since = time.time(), 0
        while self.step < steps:
            log_now = (self.step + 1) % cfg.train.log_every == 0 or self.step + 1 == steps
            stats = {} if log_now and (cfg.train.fw_stats_every == 0 or
                                       (self.step + 1) % cfg.train.fw_stats_every == 0) else None
            loss = self._train_step(it, accum, stats)
            self.step += 1
            self.consumed_samples += cfg.train.global_batch_size
            steps_since += 1
            if log_now:
                dt = time.time() - t_last
                last = self._log(loss, stats, tokens_per_step * steps_since / max(dt, 1e-9))
                t_last, steps_since = time.time(), 0
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                self._evaluate()
            exiting = bool(cfg.train.exit_interval) and self.step % cfg.train.exit_interval == 0
            if self.step % cfg.train.checkpoint_every == 0 or self.step == steps or exiting:
                self._save()
            if exiting and self.step < steps:
                self._say(f"stopping at step {self.step} (train.exit_interval={cfg.train.exit_interval}); "
                          f"run the same command again to continue")
                break
        if self.writer:
            self.writer.close()
        return self._summary(last)

    def _train_step(self, it, accum: int, stats: Optional[dict]) -> float:
        self.engine.train()
        self._lr = float(self.scheduler.get_last_lr()[0])  # the lr this step's update uses (logged below)
        total = 0.0
        for micro in range(accum):
            loss = self.engine(**self._batch(next(it)), stats=stats if micro == 0 else None)
            self.engine.backward(loss)
            self.engine.step()  # applies the optimizer only at the accumulation boundary
            total += loss.item()
        loss = self._dp_mean(total / accum)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {self.step + 1}")
        return loss

    def _log(self, loss: float, stats: Optional[dict], tok_s: float) -> dict:
        gn = self.engine.get_global_grad_norm()
        gn = float(gn) if gn is not None else float("nan")
        lr = self._lr
        tokens = self.consumed_samples * self.task.tokens_per_sample()
        rec = {"loss": loss, "lr": lr, "grad_norm": gn, "tokens": tokens, "tokens_per_s": tok_s}
        if self.writer:
            scalars = {"train/loss": loss, "train/lr": lr, "train/grad_norm": gn, "train/tokens_per_s": tok_s,
                       "train/tokens": tokens}
            if stats:
                scalars.update(summarize_fw_stats(stats))
            self.writer.scalars(self.step, scalars, record=rec)
        if self.report and self.pg.is_first:
            self.report({"step": self.step, "steps": self.cfg.train.steps, **rec})
        return rec

    @torch.no_grad()
    def _evaluate(self) -> float:
        self.engine.eval()
        loader = self.task.build_loader("val", 0, 0)
        it, total, n = iter(loader), 0.0, self.cfg.train.eval_batches
        for _ in range(n):
            total += self.engine(**self._batch(next(it))).item()
        val = self._dp_mean(total / n)
        if self.writer:
            self.writer.scalars(self.step, {"val/loss": val})
        if self.report and self.pg.is_first:
            self.report({"step": self.step, "val_loss": val})
        return val

    def _save(self) -> None:
        manifest = {"consumed_samples": self.consumed_samples,
                    "tokens": self.consumed_samples * self.task.tokens_per_sample(),
                    "config_yaml": config_to_yaml(self.cfg),
                    "versions": {"torch": torch.__version__, "deepspeed": _version("deepspeed")}}
        path = self.ckpt.save(self.engine, self.step, manifest, {"data": self.loader.state_dict()})
        if self.writer:
            self.writer.flush()
        if self.report and self.pg.is_first:
            self.report({"step": self.step, "checkpoint": path})

    def _summary(self, last: Optional[dict]) -> dict:
        return {"step": self.step, "run_dir": self.run_dir, "last": last,
                "checkpoints": os.path.join(self.run_dir, "checkpoints"), "tb": os.path.join(self.run_dir, "tb")}


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return "unknown"
