"""Gather the scores that runs wrote themselves (their metrics.json) into one result JSON.

    .venv/bin/python benchmarks/tried/run_scores.py runs/q-f0 runs/q-f1 runs/q-cv2 --json out.json

`biounet train` and `biounet ensemble` score the held-out images once at the end and write the result
to the run's metrics.json (``holdout_*``) beside the validation scores (``tuned_*``, tuned on the
run's validation images, or out-of-fold for a cross-validation ensemble). Where nothing more than that
is wanted (no per-modality scores, no baseline), this copies them, so a README figure can be traced to a
file without running a network again. Runs on different validation folds have validation scores on
different images: compare their held-out scores, not their validation ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("epoch", "tuned_dsb", "tuned_ap50", "tuned_ap75", "out_of_fold",
        "holdout_dsb", "holdout_ap50", "holdout_ap75")


def run_scores(folder: Path) -> dict:
    """The scalar scores of one run, the validation fold it used and, for an ensemble, its members."""
    from biounet import checkpoint

    metrics = checkpoint.read_metrics(folder)
    if "holdout_dsb" not in metrics:
        raise SystemExit(f"{folder}: metrics.json has no held-out score (trained without held-out images?)")
    cfg = checkpoint.load_config(folder)
    row = {k: metrics[k] for k in KEYS if k in metrics}
    row["n_validation"] = len(metrics.get("val_items", []))
    row["n_held_out"] = len(metrics.get("holdout_items", []))
    if "members" in metrics:  # an ensemble: its members' folds and seeds are theirs
        row["members"] = [m.get("run", "") for m in metrics["members"]]
    else:
        row["fold"] = {"fold": cfg.data.fold, "folds": cfg.data.folds}
        row["seed"] = cfg.train.seed
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run or ensemble folders")
    ap.add_argument("--json", type=Path, help="write the table here")
    args = ap.parse_args()
    table = {str(run): run_scores(run) for run in args.runs}
    for name, row in table.items():
        print(f"{name:24s} validation {row.get('tuned_dsb', float('nan')):.4f}"
              f"  held-out {row['holdout_dsb']:.4f}  AP@0.5 {row.get('holdout_ap50', float('nan')):.4f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
