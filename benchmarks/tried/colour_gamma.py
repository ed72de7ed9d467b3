"""Test-time gamma on one modality's images (issue #13): would brightening pale nuclei find the missed ones?

    .venv/bin/python benchmarks/tried/colour_gamma.py [--gammas 0.5,0.7,1,1.4] [--modality colour] [--json out.json]

Only the images of one modality are scored: colour (stained, the default) or dark (fluorescence, whose
faint nuclei are most of the misses `benchmarks/dsb_errors.py` puts down to the network). Their
normalised input x (~0..1; for colour the red channel, inverted) becomes clip(x, 0, 1) ** gamma before
the network (gamma 1: x as shipped); the shipped post-processing is kept. The gamma is chosen on the
run's validation images of that modality and its held-out images are scored once for every gamma, so
the chosen one's held-out score is free of selection (the others are shown, not picked from).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from _report import MODALITY_NAMES, split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--gammas", default="0.5,0.7,1,1.4")
    ap.add_argument("--modality", default="colour", choices=sorted(MODALITY_NAMES))
    args = ap.parse_args()

    from _report import held_out_split
    from biounet.data.dataset import items_named, modality

    sp = held_out_split(args.model, args.data)
    seg, task = sp.seg, sp.task
    gammas = [float(g) for g in args.gammas.split(",")]

    def scores(names):
        out = {g: [] for g in gammas}
        for item in items_named(sp.items, names):
            img, lab = item.load()
            if modality(img) != args.modality:
                continue
            x = seg.prepare(img, item.name)
            for g in gammas:  # gamma 1 is the shipped input, unclipped
                y = x if g == 1 else np.clip(x, 0, 1) ** g
                prob = seg.predict_prepared(np.ascontiguousarray(y, dtype=np.float32))
                out[g].append(task.image_score(lab, task.segment(prob, seg.post)))
        return {g: float(np.mean(v)) for g, v in out.items()}, len(out[gammas[0]])

    val, n_val = scores(sp.validation)
    held, n_held = scores(sp.held_out)
    best = max(gammas, key=lambda g: val[g])
    print(f"{args.modality} images: {n_val} validation, {n_held} held-out; gamma chosen on validation: {best}")
    print("| gamma | validation DSB | held-out DSB |\n|---|---|---|")
    for g in gammas:
        print(f"| {g} | {val[g]:.4f} | {held[g]:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "modality": args.modality, "chosen": best,
                                         "validation": val, "holdout": held,
                                         "images": {"validation": n_val, "holdout": n_held}}, indent=2))


if __name__ == "__main__":
    main()
