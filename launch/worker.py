"""One training process as a Ray actor: sets up the rank's environment, then runs `run_training`.

Each actor's stdout/stderr (Python and C++ alike, via dup2) go to `<run_dir>/logs/rank_XXXXX.log`, so the driver's
console shows only the progress bar and one-line messages while every rank keeps a full log for post-mortems.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import warnings


class TrainWorker:
    """Plain class; the launcher wraps it with `ray.remote(...)` and its resource options."""

    def __init__(self, rank: int, world: int, run_dir: str, env: dict[str, str], threads: int, attempt: int):
        self.rank, self.world = rank, world
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        self.log_path = os.path.join(run_dir, "logs", f"rank_{rank:05d}.log")
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        print(f"===== rank {rank}/{world} attempt {attempt} pid {os.getpid()} =====", flush=True)
        os.environ.update(env)
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
                           "OMP_NUM_THREADS": str(threads)})
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so a GPU worker always sees its GPU as device 0.
        if os.environ.get("CUDA_VISIBLE_DEVICES", "") == "":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
        warnings.filterwarnings("ignore", message=".*Apex.*")

    def pid(self) -> int:
        return os.getpid()

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port for the rendezvous (asked of rank 0 only)."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, cfg_dict: dict, master_addr: str, master_port: int, queue=None) -> dict:
        os.environ.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        from lactron.launch.config import Config
        from lactron.launch.schema import from_dict
        from lactron.launch.trainer import run_training

        cfg = from_dict(Config, cfg_dict)
        report = (lambda msg: queue.put(msg)) if (queue is not None and self.rank == 0) else None
        try:
            return run_training(cfg, report)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
