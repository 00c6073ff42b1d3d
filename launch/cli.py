"""The `lactron` command.

    lactron train CONFIG [key.sub=value ...]   train (or resume) the run described by one YAML file
    lactron data prepare-text ...              pack text files into webdataset token shards
    lactron status RUN_DIR                     step, tokens, last good checkpoint, restarts, last error

Every user error (bad config key or type, missing data, a layout that does not divide the world, an unusable
checkpoint) is printed as one `error: ...` line with a non-zero exit, never as a traceback. Heavy imports (torch,
ray, deepspeed) happen inside the commands so `--help` is instant.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional


def _user_errors() -> tuple[type, ...]:
    from lactron.data.errors import DataError
    from lactron.model.config import ModelConfigError
    from lactron.parallel.checkpoint import CheckpointError
    from lactron.parallel.dims import LayoutError

    from .ray_launcher import LaunchError
    from .schema import ConfigError

    return ConfigError, ModelConfigError, DataError, LayoutError, CheckpointError, LaunchError


# --------------------------------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run_dir import prepare_run_dir, preflight

    cfg = load_config(args.config, args.overrides)
    preflight(cfg)
    prepare_run_dir(cfg)
    from .ray_launcher import launch

    summary = launch(cfg, max_restarts=args.max_restarts, progress=not args.no_progress)
    last = summary.get("last") or {}
    tb = summary["tb"]
    print()
    print(f"done: step {summary['step']}" + (f", loss {last['loss']:.4f}" if last else ""))
    print(f"  TensorBoard logs: {tb}")
    print(f"  view them with:   tensorboard --logdir {tb} --host 127.0.0.1")
    print(f"  checkpoints:      {summary['checkpoints']} (latest: "
          f"{_read(os.path.join(summary['checkpoints'], 'latest')) or 'none'})")
    print(f"  metrics:          {os.path.join(cfg.run.dir, 'metrics.jsonl')}")
    kept = [o for o in args.overrides if not o.startswith("train.steps=")]
    print("  continue:         " + " ".join(["lactron train", args.config, *kept, "train.steps=<more>"]))
    return 0


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------- status

def cmd_status(args: argparse.Namespace) -> int:
    from .status import run_status

    print(run_status(args.run_dir))
    return 0


# --------------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lactron", description="Distributed training of LaCT fast-weight "
                                "Transformers (LM and AR video) on Ray + DeepSpeed.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train or resume the run described by a YAML config",
                       description="Train (or resume) from one YAML file. Overrides use key.sub=value, e.g. "
                                   "`train.steps=200 cluster.num_workers=2`. Re-running the same command resumes "
                                   "from the run directory's latest good checkpoint.")
    t.add_argument("config", help="path to a YAML config, e.g. configs/lm_tiny.yaml")
    t.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    t.add_argument("--max-restarts", type=int, default=0,
                   help="restart the worker group from the latest checkpoint this many times on failure")
    t.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="build datasets (webdataset shards)",
                       description="Build webdataset shard sets for training.")
    dsub = d.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dsub.required = True
    from lactron.data.cli import register

    register(dsub)

    s = sub.add_parser("status", help="show a run's progress, checkpoints, restarts and last error",
                       description="Summarise a run directory: step, tokens, last good checkpoint, restarts and "
                                   "the last error.")
    s.add_argument("run_dir", help="a run directory, e.g. runs/lm_tiny")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --no-progress a.b=1`), which argparse's positional
    # nargs="*" does not pick up; collect them here and reject anything else it did not recognise.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    errors = _user_errors()
    try:
        return int(args.func(args) or 0)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the latest checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
