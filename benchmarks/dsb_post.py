"""Post-processing search for a nuclei model, chosen on validation, scored once on held-out images.

    .venv/bin/python benchmarks/dsb_post.py                                   # shipped model, task grid
    .venv/bin/python benchmarks/dsb_post.py --model runs/nuclei --grid min_size=20,40,60,80
    .venv/bin/python benchmarks/dsb_post.py --no-refine     # the task grid alone, without its refine stage

The network runs once per image (validation and held-out); every post-processing setting is then
applied to the cached probabilities. The grid (the nuclei task's own, with --grid entries replacing
or adding fields of PostConfig), then the task's refine grid around its best setting, is searched on
the run's validation images only, as training does;
the held-out images are scored once with the model's stored thresholds and once with the choice,
so a gain here is free of selection. Use it before changing post-processing code or the task grid.
"""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np


def parse_grid(entries: list[str]) -> dict[str, list]:
    """``["min_size=20,40", "threshold=0.5"]`` -> ``{"min_size": [20, 40], "threshold": [0.5]}``."""
    grid: dict[str, list] = {}
    for entry in entries:
        key, _, values = entry.partition("=")
        if not values:
            raise SystemExit(f"--grid {entry!r}: expected field=v1,v2,...")
        grid[key.strip()] = [json.loads(v) for v in values.split(",")]
    return grid


def main() -> None:
    from _report import split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--grid", action="append", default=[], help="field=v1,v2,... (repeatable)")
    ap.add_argument("--no-refine", action="store_true", help="search --grid only, not the task's refine grid after it")
    args = ap.parse_args()

    from _report import MODALITY_NAMES, held_out_split, markdown_table
    from biounet.data.dataset import items_named, modality
    from biounet.metrics.instance import evaluate_instances
    from biounet.tune import predict_items, tune_post

    sp = held_out_split(args.model, args.data)
    seg, task = sp.seg, sp.task
    t0 = time.perf_counter()
    val = predict_items(seg, items_named(sp.items, sp.validation))
    held, kinds = [], {}
    for item in items_named(sp.items, sp.held_out):  # as predict_items, keeping each image's modality
        img, lab = item.load()
        kinds[item.name] = MODALITY_NAMES[modality(img)]
        held.append((item.name, seg.predict_prepared(seg.view(img, item.name)), lab))
    print(f"network on {len(val)} validation + {len(held)} held-out images: {time.perf_counter() - t0:.0f} s")

    grid = {**task.grid, **parse_grid(args.grid)}
    t0 = time.perf_counter()
    refine = {} if args.no_refine else task.refine
    chosen, val_scores = tune_post(task, val, seg.post, grid, refine)  # as training tunes: grid, then refine
    val_score = val_scores[task.metric]
    n_settings = sum(int(np.prod([len(v) for v in g.values()])) for g in (grid, refine) if g)
    print(f"grid {grid}, then {refine}: {n_settings} settings on validation in {time.perf_counter() - t0:.0f} s")
    stored_val = float(np.mean([task.image_score(lab, task.segment(p, seg.post)) for _, p, lab in val]))

    rows, by_kind = {}, {}
    for label, post in (("stored", seg.post), ("chosen", chosen)):
        summary, per_image = evaluate_instances([(n, lab, task.segment(p, post)) for n, p, lab in held])
        rows[label] = summary
        by_kind[label] = {}
        for r in per_image:
            by_kind[label].setdefault(kinds[r["name"]], []).append(r["dsb_score"])
    print(f"\nstored thresholds {seg.post}\n  validation mean DSB {stored_val:.4f}")
    print(f"chosen on validation {chosen}\n  validation mean DSB {val_score:.4f}\n")
    print(f"held-out ({len(held)} images, scored once):")
    print(markdown_table(["post-processing", "DSB score", "AP@0.5", "AP@0.75", "true nuclei", "predicted"]
                         + sorted(by_kind["stored"]),
                         [[k, r["dsb_score"], r["ap50"], r["ap75"], r["n_true"], r["n_pred"]]
                          + [float(np.mean(by_kind[k][m])) for m in sorted(by_kind[k])] for k, r in rows.items()]))
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "grid": grid, "refine": refine, "stored": dataclasses.asdict(seg.post),
            "chosen": {k: getattr(chosen, k) for k in {**grid, **refine}},
            "validation": {"stored": stored_val, "chosen": val_score},
            "holdout": rows, "holdout_by_modality": {k: {m: float(np.mean(v)) for m, v in d.items()}
                                                     for k, d in by_kind.items()}}, indent=2, default=str))


if __name__ == "__main__":
    main()
