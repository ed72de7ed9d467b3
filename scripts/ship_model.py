"""Copy a trained run into the package as a shipped model (fp16 weights, config, thresholds, metrics).

    .venv/bin/python scripts/ship_model.py runs/isbi isbi2012-membrane
"""
from __future__ import annotations

import sys
from pathlib import Path

from biounet.checkpoint import WEIGHTS_DIR, ship

if __name__ == "__main__":
    print(ship(Path(sys.argv[1]), WEIGHTS_DIR / sys.argv[2]))
