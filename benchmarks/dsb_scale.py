"""Does resizing images to the training object size help a nuclei model? Chosen on validation, scored held-out.

    .venv/bin/python benchmarks/dsb_scale.py                       # shipped model, factors 0.5 0.7 1 1.4 2
    .venv/bin/python benchmarks/dsb_scale.py --model runs/nuclei --json benchmarks/tried/dsb-scale.json

Every validation and held-out image is segmented at each resize factor (``--diameter`` = the model's
recorded object diameter / factor, what `biounet predict --diameter` does). Printed: the mean DSB score per
factor, the per-image best factor (an oracle, an upper bound no rule reaches), and the rule a user without
labels could apply: estimate the objects' median diameter from the unscaled segmentation and resize by
(training diameter / estimate) when that ratio lies outside [1/r, r] (snapped to the nearest factor). r is
chosen on the validation images; the held-out row is scored once with it.
"""
from __future__ import annotations

import json
import time

import numpy as np


def rule_factor(train_d: float, est_d: float, r: float, factors: list[float]) -> float:
    """The factor the diameter rule picks: 1 while train_d / est_d lies in [1/r, r], else the nearest factor."""
    want = train_d / max(est_d, 1.0)
    if 1 / r <= want <= r:
        return 1.0
    return min(factors, key=lambda f: abs(np.log(f / want)))


def main() -> None:
    from _report import split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.4, 2.0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.3, 1.6, 2.0, 2.5])
    args = ap.parse_args()
    factors = sorted(set(args.factors) | {1.0})

    from _report import MODALITY_NAMES, held_out_split, markdown_table
    from biounet.data.dataset import items_named, modality
    from biounet.tune import median_diameter

    sp = held_out_split(args.model, args.data)
    seg, task, items = sp.seg, sp.task, sp.items
    if not seg.train_diameter:
        raise SystemExit(f"{args.model}: records no object diameter")
    records = []
    t0 = time.perf_counter()
    for part, names in (("validation", sp.validation), ("held-out", sp.held_out)):
        for item in items_named(items, names):
            img, lab = item.load()
            rec = {"split": part, "name": item.name, "modality": MODALITY_NAMES[modality(img)], "score": {}}
            for f in factors:
                out = (seg if f == 1.0 else seg.with_options(diameter=seg.train_diameter / f)).segment(img, item.name)
                rec["score"][f] = task.image_score(lab, out)
                if f == 1.0:
                    rec["estimated_diameter"] = median_diameter([out])
            records.append(rec)
    print(f"{len(records)} images x {len(factors)} factors in {time.perf_counter() - t0:.0f} s; "
          f"training diameter {seg.train_diameter:.1f} px")

    def mean(recs: list[dict], pick) -> float:
        return float(np.mean([pick(r) for r in recs])) if recs else float("nan")

    parts = {p: [r for r in records if r["split"] == p] for p in ("validation", "held-out")}
    rule = {p: {r: mean(recs, lambda x, r=r: x["score"][rule_factor(seg.train_diameter, x["estimated_diameter"],
                                                                     r, factors)])
                for r in args.ratios} for p, recs in parts.items()}
    best_r = max(args.ratios, key=lambda r: rule["validation"][r])
    rows = []
    for p, recs in parts.items():
        rows.append([p, len(recs)] + [mean(recs, lambda x, f=f: x["score"][f]) for f in factors]
                    + [mean(recs, lambda x: max(x["score"].values())), rule[p][best_r]])
        for m in sorted({r["modality"] for r in recs}):
            sub = [r for r in recs if r["modality"] == m]
            rows.append([f"  {m}", len(sub)] + [mean(sub, lambda x, f=f: x["score"][f]) for f in factors]
                        + [mean(sub, lambda x: max(x["score"].values())), ""])
    print(markdown_table(["images", "n"] + [f"x{f:g}" for f in factors] + ["per-image best (oracle)",
                                                                          f"diameter rule, r {best_r:g}"], rows))
    print("diameter rule by r (validation / held-out): "
          + ", ".join(f"{r:g}: {rule['validation'][r]:.4f} / {rule['held-out'][r]:.4f}" for r in args.ratios))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "factors": factors, "train_diameter": seg.train_diameter,
                                         "rule_by_ratio": rule, "chosen_ratio": best_r, "images": records}, indent=2))


if __name__ == "__main__":
    main()
