"""Run a training job on a Ray cluster: connect (or start a local one), place one actor per rank, stream progress,
and restart the whole worker group from the newest good checkpoint when a worker dies.

Why actors and not Ray Train's TorchTrainer: we need TP groups placed on one node in rank order, an explicit
process-group timeout, our own checkpoint pointer as the single source of truth for restarts (Ray Train resumes from
the last *reported* checkpoint, which can lag a step), and progress streamed to one bar — each a few lines here.

A local cluster binds to 127.0.0.1 only, with the dashboard off unless `cluster.dashboard: true`.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from .config import Config
from .schema import to_dict


class LaunchError(RuntimeError):
    """The job could not be placed or failed beyond its restart budget; the message says why."""


def _connect(cfg: Config) -> bool:
    """ray.init for an existing cluster (cluster.address) or a new local one. Returns True if we started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    c = cfg.cluster
    if c.address:
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        return False
    # Ray replaces an explicit 127.0.0.1 by the machine's routable IP unless it believes it is a single-node
    # desktop install; this switch makes every daemon (GCS, raylet, workers) listen on loopback only.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    need = c.num_workers * c.cpus_per_worker
    ray.init(num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), num_gpus=None if c.gpus_per_worker else 0,
             include_dashboard=c.dashboard, dashboard_host="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    return True


def _check_resources(cfg: Config) -> None:
    import ray

    c = cfg.cluster
    have = ray.cluster_resources()
    for res, per in (("CPU", c.cpus_per_worker), ("GPU", c.gpus_per_worker)):
        need = per * c.num_workers
        if need > have.get(res, 0) + 1e-9:
            raise LaunchError(f"cluster.num_workers={c.num_workers} x cluster.{res.lower()}s_per_worker={per} "
                              f"needs {need:g} {res}s but the Ray cluster has {have.get(res, 0):g}")


class RunState:
    """`<run_dir>/run_state.json`: attempts, restarts, status and last error (read by `lactron status`)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "run_state.json")
        self.data = {"attempts": 0, "restarts": 0, "status": "new", "last_error": None}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.data.update(json.load(f))

    def update(self, **kw) -> None:
        self.data.update(kw, updated=time.time())
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def launch(cfg: Config, max_restarts: int = 0, progress: bool = True) -> dict:
    """Run the job to completion; returns rank 0's summary. Raises LaunchError when it cannot finish."""
    import ray

    started = _connect(cfg)
    state = RunState(cfg.run.dir)
    try:
        _check_resources(cfg)
        attempt = 0
        while True:
            attempt += 1
            state.update(attempts=state.data["attempts"] + 1, status="running")
            try:
                summary = _run_once(cfg, attempt, progress)
                state.update(status="finished", step=summary.get("step"))
                return summary
            except _WorkerFailure as e:
                state.update(status="failed", last_error=e.message)
                if attempt > max_restarts:
                    budget = f"{max_restarts} restart{'s' if max_restarts != 1 else ''}"
                    raise LaunchError(f"training failed ({e.message}); restart budget of {budget} used up; "
                                      f"rank logs: {os.path.join(cfg.run.dir, 'logs')}") from None
                state.update(restarts=state.data["restarts"] + 1, status="restarting")
                print(f"[lactron] worker failure ({e.message}); restarting the worker group from the latest good "
                      f"checkpoint ({attempt}/{max_restarts})", flush=True)
    finally:
        if started:
            ray.shutdown()


class _WorkerFailure(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _run_once(cfg: Config, attempt: int, progress: bool) -> dict:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from .progress import ProgressPrinter
    from .worker import TrainWorker

    c = cfg.cluster
    bundle = {"CPU": c.cpus_per_worker, **({"GPU": c.gpus_per_worker} if c.gpus_per_worker else {})}
    pgroup = placement_group([dict(bundle) for _ in range(c.num_workers)], strategy="PACK")
    if not pgroup.wait(timeout_seconds=120):
        remove_placement_group(pgroup)
        raise LaunchError(f"could not place {c.num_workers} workers with {bundle} each within 120 s")
    Actor = ray.remote(TrainWorker)
    env = {"PYTHONUNBUFFERED": "1", **c.env}
    threads = max(1, int(c.cpus_per_worker))
    actors = [Actor.options(num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker, max_concurrency=2,
                            scheduling_strategy=PlacementGroupSchedulingStrategy(pgroup, placement_group_bundle_index=i))
              .remote(i, c.num_workers, cfg.run.dir, env, threads, attempt) for i in range(c.num_workers)]
    queue = Queue()
    printer = ProgressPrinter(cfg.train.steps, enabled=progress)
    try:
        addr, port = ray.get(actors[0].address.remote())
        cfg_dict = to_dict(cfg)
        refs = {a.run.remote(cfg_dict, addr, port, queue if i == 0 else None): i for i, a in enumerate(actors)}
        results: dict[int, dict] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, timeout=0.2)
            for msg in _drain(queue):
                printer.handle(msg)
            for ref in done:
                rank = refs[ref]
                try:
                    results[rank] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - any worker death fails the group
                    raise _WorkerFailure(_describe(e, rank, cfg.run.dir)) from None
        for msg in _drain(queue):
            printer.handle(msg)
        return results[0]
    finally:
        printer.close()
        for a in actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(pgroup)


def _drain(queue) -> list:
    try:
        return queue.get_nowait_batch(queue.qsize()) if queue.qsize() else []
    except Exception:  # noqa: BLE001 - the queue actor can be gone at teardown
        return []


def _describe(e: Exception, rank: int, run_dir: str) -> str:
    """One line naming the failing rank and the root cause; the full traceback stays in the rank's log."""
    import ray.exceptions as rex

    log = os.path.join(run_dir, "logs", f"rank_{rank:05d}.log")
    if isinstance(e, rex.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        lines = traceback.format_exception_only(type(cause), cause)
        return f"rank {rank} raised {lines[-1].strip()} (see {log})"
    if isinstance(e, rex.ActorDiedError) or isinstance(e, rex.RayActorError):
        return f"rank {rank}'s process died (killed or crashed; see {log})"
    return f"rank {rank}: {type(e).__name__}: {e}"

