"""Copy a trained run into the package as a shipped model (fp16 weights, config, thresholds, metrics).

    .venv/bin/python scripts/ship_model.py runs/isbi isbi2012-membrane
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from biounet.checkpoint import save_weights
from biounet.predict import WEIGHTS_DIR, load_model


def ship(run_dir: Path, name: str) -> Path:
    seg = load_model(run_dir)
    dest = WEIGHTS_DIR / name
    dest.mkdir(parents=True, exist_ok=True)
    save_weights(dest / "model.safetensors", seg.module, half=True)
    for f in ("config.json", "thresholds.json", "metrics.json", "history.jsonl", "curve.png"):
        if (run_dir / f).is_file():
            shutil.copyfile(run_dir / f, dest / f)
    return dest


if __name__ == "__main__":
    print(ship(Path(sys.argv[1]), sys.argv[2]))
