"""The DeepSpeed engine around the LaCT LM in both precisions the YAML offers."""
import pytest
import torch

from lactron.launch.config import load_config
from lactron.launch.ds_config import deepspeed_config
from lactron.launch.lr_schedule import lr_multiplier, make_scheduler
from lactron.model.config import FastWeightConfig, LMConfig
from lactron.model.lm import LaCTLM
from lactron.parallel.dims import ParallelDims, init_process_groups
from lactron.parallel.engine import build_engine, weight_decay_groups
from lactron.parallel.spawn import spawn_ranks


def _train(rank, precision):
    cfg = load_config("configs/lm_tiny.yaml", [f"train.precision={precision}", "cluster.num_workers=1",
                                               "train.global_batch_size=4", "optim.warmup_steps=0"])
    pg = init_process_groups(ParallelDims.from_world(1), timeout_s=60)
    torch.manual_seed(0)
    model = LaCTLM(LMConfig(dim=32, n_layers=2, n_heads=2, window=16,
                            fast_weight=FastWeightConfig(n_heads=2, chunk_size=16)))
    engine, _, sched = build_engine(model, deepspeed_config(cfg), pg, weight_decay_groups(model, 0.1),
                                    lr_scheduler=make_scheduler(cfg.optim, 6))
    assert sched.get_last_lr()[0] == pytest.approx(cfg.optim.lr)  # warmup 0: the first update uses the full lr
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 65), generator=g)  # one fixed batch: the loss must fall when fitting it
    losses, stats = [], {}
    for step in range(6):
        loss = engine(x[:, :-1], x[:, 1:], stats=stats if step == 0 else None)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    dtypes = {p.dtype for p in engine.module.parameters()}
    return losses, dtypes, stats


@pytest.mark.slow
@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_engine_trains_in_precision(precision, dtype):
    (losses, dtypes, stats), = spawn_ranks(_train, 1, precision)
    assert dtypes == {dtype}
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.3, losses
    fw = stats["layer0"]
    assert all(torch.isfinite(torch.tensor(v)) for v in fw.values()) and fw["update_norm/w0"] > 0


def test_lr_schedule_shape():
    f = lambda s, **kw: lr_multiplier(s, **{"warmup": 4, "total": 14, "min_ratio": 0.1, "schedule": "cosine", **kw})
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]          # the first update is not wasted at lr=0
    assert f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    assert f(0, warmup=0) == 1.0 and f(20, schedule="constant") == 1.0
