"""Checks before any worker starts, and the run directory's resolved config.

Failing here costs a second; failing after Ray started and four workers imported DeepSpeed costs a minute and
prints a traceback from a remote process.
"""
from __future__ import annotations

import os

import yaml

from .config import Config, config_to_yaml
from .schema import ConfigError, to_dict


def preflight(cfg: Config) -> None:
    """Open the dataset the way the workers will (raises DataError with the fix) and check it fits the model."""
    from lactron.data.loader import TokenDataset

    ds = TokenDataset(cfg.data.path, "train", cfg.data.seq_len, verify=cfg.data.verify)
    vocab = int(ds.shards.index.get("vocab_size", 0))
    if vocab > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the dataset's vocabulary "
                          f"({vocab}, tokenizer {ds.shards.index.get('tokenizer')!r} at {cfg.data.path})")
    samples_per_step = cfg.train.global_batch_size
    if len(ds) < samples_per_step:
        raise ConfigError(f"the dataset at {cfg.data.path} has {len(ds)} training samples, fewer than one global "
                          f"batch (train.global_batch_size={samples_per_step})")


# Sections whose change makes the checkpoints of an existing run unusable.
_FROZEN = ("model", "parallel")


def prepare_run_dir(cfg: Config) -> str:
    """Create the run directory; if it exists, refuse a config whose model or layout differs from the one the
    checkpoints were made with (naming the first differing key), then write the resolved config."""
    os.makedirs(cfg.run.dir, exist_ok=True)
    path = os.path.join(cfg.run.dir, "config.yaml")
    new = to_dict(cfg)
    if os.path.exists(path) and os.path.isdir(os.path.join(cfg.run.dir, "checkpoints")):
        with open(path) as f:
            old = yaml.safe_load(f) or {}
        for section in _FROZEN:
            diff = _first_diff(old.get(section), new.get(section), section)
            if diff:
                raise ConfigError(f"run directory {cfg.run.dir} holds checkpoints of a different {section} "
                                  f"config ({diff}); use another run.name or run.dir")
    with open(path + ".tmp", "w") as f:
        f.write(config_to_yaml(cfg))
    os.replace(path + ".tmp", path)
    return path


def _first_diff(a, b, path: str):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_diff(a.get(k), b.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} -> {b!r}"
