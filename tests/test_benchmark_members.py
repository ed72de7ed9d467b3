"""benchmarks/tried/members.py: an ensemble's networks written one per folder average back to the ensemble."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_members_average_back_to_the_ensemble(tmp_path):
    from biounet.predict import load_model

    subprocess.run([sys.executable, str(ROOT / "benchmarks/tried/members.py"), "dsb2018-nuclei",
                    str(tmp_path / "m")], check=True, capture_output=True)
    whole = load_model("dsb2018-nuclei")
    n = whole.config.model.members
    parts = [load_model(tmp_path / f"m{i}") for i in range(1, n + 1)]
    assert n == 3 and all(p.config.model.members == 1 for p in parts) and not (tmp_path / f"m{n + 1}").exists()
    img = np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8)
    mean = np.mean([p.predict(img) for p in parts], axis=0)
    assert np.abs(whole.predict(img) - mean).max() < 1e-3  # fp16 weights either way
    assert not np.allclose(parts[0].predict(img), parts[1].predict(img), atol=1e-3)  # three different networks
    shipped = json.loads((ROOT / "src/biounet/weights/dsb2018-nuclei/metrics.json").read_text())
    kept = json.loads((tmp_path / "m2" / "metrics.json").read_text())
    assert kept["holdout_items"] == shipped["holdout_items"] and kept["record"] == shipped["members"][1]
