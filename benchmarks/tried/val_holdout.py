"""Does the validation score rank the tried changes as the held-out images do? (issue #13)

    .venv/bin/python benchmarks/tried/val_holdout.py [--json out.json]

Every change in the tried table was kept or dropped on its validation score (thresholds and epoch picked
on the 51 validation images) and then scored once on the 56 held-out images. This script reads back every
result JSON in benchmarks/tried that records both scores, plus the shipped model, and asks, within each
kind of run, how well the validation order predicts the held-out order: Spearman's rho and Kendall's tau
(tau is the share of pairs ordered alike minus the share ordered oppositely). Runs are grouped by name:
``q-*`` quick-config runs (20 epochs), ``ens*`` and the shipped model ensembles, the rest single
full-length networks (128 epochs, or warm restarts of one). Only runs on the same split are compared;
no network is run, so it takes a second.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

ROOT = Path(__file__).resolve().parents[2]
TRIED = ROOT / "benchmarks" / "tried"
SHIPPED = ("shipped", ROOT / "benchmarks" / "results-dsb2018.json",
           ROOT / "src" / "biounet" / "weights" / "dsb2018-nuclei" / "metrics.json")


def group(name: str) -> str:
    """Which kind of run a tried JSON holds, from the name its file table gives it."""
    if name.startswith("q-"):
        return "quick"
    if name.startswith("ens") or name == "shipped":
        return "ensemble"
    return "single"


def read_rows() -> list[dict]:
    """(name, group, validation, held-out) for every run that records both scores."""
    rows = []
    for path in sorted(TRIED.glob("dsb2018-*.json")):
        d = json.loads(path.read_text())
        val = (d.get("validation") or {}).get("tuned_dsb")
        results = d.get("results") or {}
        if val is None or not results:
            continue
        name = path.stem.removeprefix("dsb2018-")
        held = next(iter(results.values()))["dsb_score"]  # the run itself; the rest are baselines
        rows.append({"name": name, "group": group(name), "validation": val, "held_out": held})
    name, held_path, val_path = SHIPPED
    results = json.loads(held_path.read_text())["results"]
    # the tried runs were all scored with every image at its own size: the shipped row without the size
    # estimate (``--diameter none``) where the file has one (it became the default after these runs)
    held = next((r for k, r in results.items() if "--diameter none" in k), next(iter(results.values())))["dsb_score"]
    rows.append({"name": name, "group": group(name),
                 "validation": json.loads(val_path.read_text())["tuned_dsb"], "held_out": held})
    return rows


def rank_agreement(val: list[float], held: list[float]) -> dict:
    """Spearman's rho and Kendall's tau of two score lists, with their two-sided p-values."""
    if len(val) != len(held) or len(val) < 3:
        raise ValueError("rank_agreement needs two lists of the same length, 3 or more")
    rho, p_rho = spearmanr(val, held)
    tau, p_tau = kendalltau(val, held)
    return {"n": len(val), "spearman": float(rho), "spearman_p": float(p_rho),
            "kendall": float(tau), "kendall_p": float(p_tau),
            "validation_range": [min(val), max(val)], "held_out_range": [min(held), max(held)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the rows and per-group agreement here")
    args = ap.parse_args()

    rows = read_rows()
    print(f"{'run':<18} {'kind':<9} {'validation':>10} {'held-out':>9}")
    for r in sorted(rows, key=lambda r: (r["group"], r["validation"])):
        print(f"{r['name']:<18} {r['group']:<9} {r['validation']:>10.4f} {r['held_out']:>9.4f}")
    by_group = {}
    for g in ("quick", "single", "ensemble"):
        sub = [r for r in rows if r["group"] == g]
        by_group[g] = rank_agreement([r["validation"] for r in sub], [r["held_out"] for r in sub])
        a = by_group[g]
        print(f"{g:<9} n={a['n']:<3} Spearman {a['spearman']:+.2f} (p {a['spearman_p']:.3f})  "
              f"Kendall {a['kendall']:+.2f} (p {a['kendall_p']:.3f})  validation spread "
              f"{a['validation_range'][1] - a['validation_range'][0]:.4f}, held-out spread "
              f"{a['held_out_range'][1] - a['held_out_range'][0]:.4f}")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"rows": rows, "by_group": by_group}, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
