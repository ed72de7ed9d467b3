"""benchmarks/tried/run_scores.py: copies each run's own scores, tells a single run from an ensemble, and
refuses a run that has no held-out score rather than writing a row without one."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tried" / "run_scores.py"


def _run(folder: Path, metrics: dict, data: dict, seed: int = 0) -> Path:
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.json").write_text(json.dumps({"data": data, "train": {"seed": seed}}))
    return folder


def test_scores_are_copied_with_fold_or_members(tmp_path):
    single = _run(tmp_path / "f1", {"epoch": 12, "tuned_dsb": 0.5, "holdout_dsb": 0.25, "holdout_ap50": 0.75,
                                     "val_items": ["a", "b"], "holdout_items": ["c"], "post": {"threshold": 0.5}},
                  {"folds": 10, "fold": 1}, seed=3)
    ens = _run(tmp_path / "cv", {"tuned_dsb": 0.4, "out_of_fold": 2, "holdout_dsb": 0.3,
                                  "val_items": ["a", "b", "d", "e"], "holdout_items": ["c"],
                                  "members": [{"run": "runs/f0"}, {"run": "runs/f1"}]}, {"folds": 10, "fold": 0})
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(SCRIPT), str(single), str(ens), "--json", str(out)],
                         capture_output=True, text=True, check=True)
    table = json.loads(out.read_text())["runs"]
    one, cv = table[str(single)], table[str(ens)]
    assert one == {"epoch": 12, "tuned_dsb": 0.5, "holdout_dsb": 0.25, "holdout_ap50": 0.75,
                   "n_validation": 2, "n_held_out": 1, "fold": {"fold": 1, "folds": 10}, "seed": 3}
    assert cv["members"] == ["runs/f0", "runs/f1"] and cv["out_of_fold"] == 2 and "fold" not in cv
    assert cv["n_validation"] == 4 and cv["holdout_dsb"] == 0.3
    assert "held-out 0.2500" in res.stdout and "held-out 0.3000" in res.stdout


def test_a_run_without_held_out_score_is_refused(tmp_path):
    run = _run(tmp_path / "noheld", {"tuned_dsb": 0.5}, {})
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, str(SCRIPT), str(run), "--json", str(out)], capture_output=True, text=True)
    assert res.returncode != 0 and "no held-out score" in res.stderr and not out.exists()
