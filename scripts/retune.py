"""Re-tune a finished run's post-processing thresholds on its validation split (no training).

    .venv/bin/python scripts/retune.py runs/nuclei

Runs the same step that ends `biounet train` (train.finish), e.g. after the threshold grid changed.
"""
from __future__ import annotations

import sys
from pathlib import Path

from biounet.checkpoint import load_config_json
from biounet.data.dataset import items_from_config, split_items
from biounet.train import finish

if __name__ == "__main__":
    run = Path(sys.argv[1])
    cfg = load_config_json(run)
    _, val = split_items(items_from_config(cfg.data), cfg.data, cfg.train.seed)
    metrics = finish(run, cfg, val)
    print({k: v for k, v in metrics.items() if k.startswith("tuned_")}, metrics["post"])
