"""Run a function on N local processes that form one torch.distributed group (gloo on CPU).

For tests and benchmarks of parallel layouts on one machine: each child gets RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT, an initialised process group with an explicit timeout, runs `fn(rank, *args)`, and sends back its
return value. A child that raises fails the whole call with its traceback; a hang is cut off after `timeout_s`.
Children are forked, so `fn` may be a closure or a test-local function.
"""
from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue
import socket
import traceback
from typing import Any, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn: Callable, rank: int, world: int, port: int, timeout_s: float, env: dict, args: tuple, q) -> None:
    try:
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **env})
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        try:
            q.put((rank, "ok", fn(rank, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - report everything, including SystemExit from deep inside
        q.put((rank, "error", traceback.format_exc()))


def spawn_ranks(fn: Callable, world: int, *args: Any, timeout_s: float = 180, env: dict | None = None) -> list:
    """Run fn(rank, *args) on `world` processes; returns the per-rank results in rank order."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world, port, timeout_s, env or {}, args, q), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world):
            try:
                rank, status, value = q.get(timeout=timeout_s + 30)
            except queue.Empty:
                missing = sorted(set(range(world)) - set(results))
                raise TimeoutError(f"ranks {missing} did not finish within {timeout_s + 30:.0f} s") from None
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
