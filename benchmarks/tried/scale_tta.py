"""Multi-scale test-time averaging (issue #13): do probabilities averaged over several image sizes score better?

    .venv/bin/python benchmarks/tried/scale_tta.py [--sets "1" "0.8,1,1.25" ...] [--json out.json]

`benchmarks/dsb_scale.py` resized each image to ONE other size and found native size best on average, yet
the per-image best size (an oracle) scored 0.017 more. A DSB 2018 habit is to average instead: the network's
probabilities at each size (resized back, as `biounet predict --diameter` does) are averaged before the
model's own post-processing. Each set of sizes is scored on the run's validation images; the set chosen
there is the one whose held-out score is free of selection (the other held-out scores are shown, not picked
from). Network time grows with the summed squares of the factors (0.8, 1, 1.25: 3.2x).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_SETS = ["1", "0.8,1", "1,1.25", "0.8,1,1.25", "0.7,1,1.4"]


def parse_sets(sets: list[str]) -> list[tuple[float, ...]]:
    """'0.8,1,1.25' -> (0.8, 1.0, 1.25); each set sorted, duplicates dropped, factors > 0."""
    out = []
    for s in sets:
        fs = tuple(sorted({float(f) for f in s.split(",") if f.strip()}))
        if not fs or min(fs) <= 0:
            raise SystemExit(f"--sets: {s!r} must list positive resize factors, e.g. 0.8,1,1.25")
        out.append(fs)
    return out


def cost(factors: tuple[float, ...]) -> float:
    """Network pixels relative to one pass at native size."""
    return float(sum(f * f for f in factors))


def main() -> None:
    from _report import MODALITY_NAMES, held_out_split, markdown_table, split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--sets", nargs="+", default=DEFAULT_SETS, help="comma-separated resize factors per set")
    args = ap.parse_args()
    sets = parse_sets(args.sets)
    factors = sorted({f for s in sets for f in s})

    from biounet.data.dataset import items_named, modality

    sp = held_out_split(args.model, args.data)
    seg, task = sp.seg, sp.task
    if any(f != 1 for f in factors) and not seg.train_diameter:
        raise SystemExit(f"{args.model}: records no object diameter, so it cannot be resized")
    views = {f: seg if f == 1 else seg.with_options(diameter=seg.train_diameter / f) for f in factors}
    records = []
    t0 = time.perf_counter()
    for part, names in (("validation", sp.validation), ("held-out", sp.held_out)):
        for item in items_named(sp.items, names):
            img, lab = item.load()
            probs = {f: v.predict_prepared(v.view(img, item.name)) for f, v in views.items()}
            score = {",".join(f"{f:g}" for f in s): task.image_score(
                lab, seg.segment_probs(np.mean([probs[f] for f in s], axis=0))) for s in sets}
            records.append({"split": part, "name": item.name, "modality": MODALITY_NAMES[modality(img)],
                            "score": score})
    keys = [",".join(f"{f:g}" for f in s) for s in sets]
    print(f"{len(records)} images, factors {factors}, in {time.perf_counter() - t0:.0f} s")

    def mean(recs: list[dict], key: str) -> float:
        return float(np.mean([r["score"][key] for r in recs])) if recs else float("nan")

    parts = {p: [r for r in records if r["split"] == p] for p in ("validation", "held-out")}
    summary = {p: {k: mean(recs, k) for k in keys} for p, recs in parts.items()}
    chosen = max(keys, key=lambda k: summary["validation"][k])
    rows = []
    for p, recs in parts.items():
        rows.append([p, len(recs)] + [summary[p][k] for k in keys])
        for m in sorted({r["modality"] for r in recs}):
            sub = [r for r in recs if r["modality"] == m]
            rows.append([f"  {m}", len(sub)] + [mean(sub, k) for k in keys])
    print(markdown_table(["images", "n"] + [f"{k} ({cost(s):.1f}x)" for k, s in zip(keys, sets)], rows))
    print(f"chosen on validation: {chosen}; its held-out score {summary['held-out'][chosen]:.4f} "
          f"against {summary['held-out'].get('1', float('nan')):.4f} at native size")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"model": args.model, "sets": keys, "cost": {k: cost(s) for k, s in zip(keys, sets)},
                                   "chosen": chosen, "summary": summary, "images": records}, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
