"""Post-processing tuned per modality (issue #13): does giving stained images their own thresholds pay?

    .venv/bin/python benchmarks/tried/modality_post.py [--model dsb2018-nuclei] [--json out.json]

The network runs once on the run's validation and held-out images. The task's grid (then its refine
grid) is searched on all validation images, as training does, and again on each modality's validation
images alone. The held-out images are scored once with the single choice and once with each image's
modality's choice (the modality is read from the image, as a deployed model could), so the comparison
is free of selection.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from _report import split_parser

    ap = split_parser(__doc__)
    args = ap.parse_args()

    from _report import MODALITY_NAMES, held_out_split, markdown_table
    from biounet.data.dataset import items_named, modality
    from biounet.tune import tune_post

    sp = held_out_split(args.model, args.data)
    seg, task = sp.seg, sp.task

    def predict(names):
        out = []
        for item in items_named(sp.items, names):
            img, lab = item.load()
            out.append((item.name, seg.predict_prepared(seg.view(img, item.name)), lab, modality(img)))
        return out

    val, held = predict(sp.validation), predict(sp.held_out)
    kinds = sorted({k for *_, k in val + held})
    overall, _ = tune_post(task, [(n, p, lab) for n, p, lab, _ in val], seg.post)
    per = {}
    for k in kinds:
        part = [(n, p, lab) for n, p, lab, kind in val if kind == k]
        per[k] = tune_post(task, part, seg.post)[0] if part else overall
        print(f"{MODALITY_NAMES[k]}: {len(part)} validation images -> {per[k]}")

    def score(rule):
        s = {k: [] for k in kinds}
        for _, p, lab, k in held:
            s[k].append(task.image_score(lab, task.segment(p, rule(k))))
        return float(np.mean([v for vs in s.values() for v in vs])), {MODALITY_NAMES[k]: float(np.mean(v)) for k, v in s.items() if v}

    rows = {"one setting (as shipped)": score(lambda k: overall), "a setting per modality": score(lambda k: per[k])}
    names = sorted(next(iter(rows.values()))[1])
    print(markdown_table(["post-processing", "held-out DSB"] + names,
                         [[label, total] + [by[n] for n in names] for label, (total, by) in rows.items()]))
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "overall": dataclasses.asdict(overall),
            "per_modality": {MODALITY_NAMES[k]: dataclasses.asdict(v) for k, v in per.items()},
            "validation_images": {MODALITY_NAMES[k]: sum(kind == k for *_, kind in val) for k in kinds},
            "holdout": {label: {"dsb_score": t, "by_modality": by} for label, (t, by) in rows.items()}},
            indent=2, default=str))


if __name__ == "__main__":
    main()
