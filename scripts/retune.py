"""Re-tune a finished run's post-processing thresholds on its validation images (no training).

    .venv/bin/python scripts/retune.py runs/nuclei

Runs the same step that ends `biounet train` (train.finish), e.g. after the task's threshold grid changed.
The validation images are the ones the run recorded in metrics.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

from biounet import checkpoint
from biounet.data.dataset import items_from_config, items_named
from biounet.train import finish

if __name__ == "__main__":
    run = Path(sys.argv[1])
    cfg = checkpoint.load_config(run)
    val = items_named(items_from_config(cfg.data), checkpoint.validation_names(run))
    metrics = finish(run, cfg, val)
    print({k: v for k, v in metrics.items() if k.startswith("tuned_")}, metrics["post"])
