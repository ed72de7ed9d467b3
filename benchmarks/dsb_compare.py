"""Is model B better than model A on the held-out images, or is it noise? A paired bootstrap over images.

    .venv/bin/python benchmarks/dsb_compare.py runs/ship-m1 dsb2018-nuclei     # A, B: shipped names or run folders
    .venv/bin/python benchmarks/dsb_compare.py runs/a runs/b --json out.json

Both models must have held out the same images (nothing was picked on them). Each segments them with its
own stored post-processing; the DSB score of every image is paired across the two, and the images are
resampled with replacement (10 000 times, seeded) to give a 95 % interval for the mean difference B - A,
overall and per modality. An interval that contains 0 means the held-out images cannot tell the two apart.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean of b - a, 2.5th and 97.5th percentile of that mean over image resamples)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, d.size, (n, d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="model A (shipped name or run folder)")
    ap.add_argument("b", help="model B")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018/stage1_train.zip"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from _report import MODALITY_NAMES, markdown_table
    from biounet.checkpoint import resolve_model, unseen_images
    from biounet.data.dataset import items_from_config, items_named, modality
    from biounet.metrics.instance import dsb_score
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides

    held = {}
    for m in (args.a, args.b):
        split, names = unseen_images(resolve_model(m))
        if split != "holdout":
            raise SystemExit(f"{m}: the run recorded no held-out images (train with data.holdout_fraction)")
        held[m] = names
    if held[args.a] != held[args.b]:
        raise SystemExit(f"{args.a} and {args.b} held out different images; they cannot be paired")
    models = [load_model(args.a), load_model(args.b)]
    cfg = apply_overrides(models[0].config, [f"data.images={args.data}"])
    scores: dict[str, list[list[float]]] = {}
    for item in items_named(items_from_config(cfg.data), held[args.a]):
        img, truth = item.load()
        kind = MODALITY_NAMES[modality(img)]
        pair = [dsb_score(truth, seg.segment(img, item.name)) for seg in models]
        scores.setdefault("all", []).append(pair)
        scores.setdefault(kind, []).append(pair)
    rows, out = [], {}
    for kind, pairs in scores.items():
        a, b = np.array(pairs).T
        diff, lo, hi = paired_bootstrap(a, b)
        out[kind] = {"images": len(a), "a": float(a.mean()), "b": float(b.mean()), "b_minus_a": diff,
                     "ci95": [lo, hi], "b_better_images": int((b > a).sum()), "a_better_images": int((a > b).sum())}
        rows.append([kind, len(a), float(a.mean()), float(b.mean()), diff, f"[{lo:+.4f}, {hi:+.4f}]",
                     f"{(b > a).sum()} / {(a > b).sum()}"])
    print(f"A = {args.a}, B = {args.b}; {len(scores['all'])} held-out images, paired bootstrap (10 000, seed 0)\n")
    print(markdown_table(["images", "n", "A DSB", "B DSB", "B - A", "95 % interval", "B better / A better"], rows))
    if args.json:
        args.json.write_text(json.dumps({"a": args.a, "b": args.b, "by_modality": out}, indent=2))


if __name__ == "__main__":
    main()
