"""benchmarks/speed.py's training rows time what training runs: the recipe before #12, the config as it is, and
it with or without a loader worker."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402
from biounet.tasks import apply_overrides, load_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs/dsb2018.toml"


def test_variants_start_from_the_recipe_before_and_end_with_the_shipped_config():
    cfg = load_config(CONFIG)
    variants = list(speed.training_variants(cfg).values())
    before, now, worker = variants[0], variants[-2], variants[-1]
    assert (before.train.channels_last, before.model.base_features) == (False, 24)
    assert now == cfg  # the shipped config's row is the config file, unchanged
    assert worker.data.num_workers != cfg.data.num_workers and worker.model == cfg.model
    assert all(v.train.loss == cfg.train.loss and v.data.patch_size == cfg.data.patch_size for v in variants)


def test_step_rate_runs_a_real_training_step_and_changes_the_weights():
    cfg = apply_overrides(load_config(CONFIG), ["model.base_features=4", "model.depth=2", "data.patch_size=32"])
    run = speed._run_for(cfg)
    w0 = run.model.head.weight.detach().clone()
    batch = {"image": torch.randn(2, 1, 32, 32), "target": torch.randint(0, 3, (2, 32, 32))}
    from biounet.train import train_step

    loss = train_step(run, batch)
    assert math.isfinite(loss) and not torch.equal(w0, run.model.head.weight)
    rate = speed.step_rate(cfg, repeats=1)
    assert math.isfinite(rate) and rate > 0


def test_interleaved_timing_takes_turns_and_keeps_each_rows_best(monkeypatch):
    calls = []
    clock = iter(range(1000))
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock))

    def row(name):
        def fn():
            calls.append(name)
            return name
        return fn

    out = speed.best_times_interleaved({"a": row("a"), "b": row("b")}, repeats=3)
    assert calls == ["a", "b"] * 4  # warm-up round, then three rounds of every row in turn
    assert out == {"a": (1, "a"), "b": (1, "b")}  # each timed call spans one tick of the fake clock


def test_speed_rows_time_one_network_of_the_shipped_pair():
    """The speed rows compare ways of running one network; the shipped nuclei model averages two."""
    from biounet.checkpoint import shipped_models
    from biounet.predict import load_model

    if "dsb2018-nuclei" not in shipped_models():
        pytest.skip("dsb2018-nuclei is not shipped in this checkout")
    seg = load_model("dsb2018-nuclei")
    one = speed.first_network(seg)
    assert one.config.model.members == 1 and one.module is seg.module.members[0]
    assert speed.first_network(one) is one
    x = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    single = one.predict_prepared(x)
    assert single.shape == (3, 64, 64) and not np.allclose(single, seg.predict_prepared(x), atol=1e-4)
