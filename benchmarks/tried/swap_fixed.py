"""Swap one network of an ensemble for another run's, at the ensemble's own post-processing, untuned.

    .venv/bin/python benchmarks/tried/members.py dsb2018-nuclei runs/ship-m     # the shipped three, one folder each
    .venv/bin/python benchmarks/tried/swap_fixed.py runs/nuclei-all runs/ship-m1 runs/ship-m2 runs/ship-m3

For a network that trained on the validation images too (``data.val_fraction = 0``: the seed-0 recipe on
train + validation, its last epoch kept), neither `biounet ensemble` nor tuning on validation is fair:
it has seen those images. So nothing is tuned here. Every network predicts each held-out image once; the
members' probabilities are averaged with equal votes (as `biounet ensemble` does) and segmented with the
post-processing stored in ``--model`` (the shipped three's, tuned on validation before this network
existed). Printed, each on the held-out images, per modality: the members as shipped (the control), the
new network in the first member's place, and the first member and the new network alone (both at that
same post-processing, which was tuned for the three, so neither alone is at its best), and the paired
bootstrap interval of the swapped three against the control and of the two networks alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def swap_rows(probs: dict[str, dict[str, np.ndarray]], other: str, members: list[str]) -> dict:
    """The four compared probability sets, each {image: probabilities}, keyed by row.

    ``probs[folder][image]`` holds each network's probabilities; an ensemble's are its members' mean.
    """
    def mean_of(folders: list[str]) -> dict[str, np.ndarray]:
        return {n: np.mean([probs[f][n] for f in folders], axis=0) for n in probs[members[0]]}

    return {"control": mean_of(members), "swapped": mean_of([other, *members[1:]]),
            "first_alone": probs[members[0]], "other_alone": probs[other]}


def score(task, post, probs: dict[str, np.ndarray], truths: dict, kinds: dict) -> dict:
    """Held-out DSB summary, per-modality and per-image scores of ``probs`` segmented with ``post``."""
    from _report import modality_means
    from biounet.metrics.instance import evaluate_instances

    summary, per = evaluate_instances([(n, truths[n], task.segment(p, post)) for n, p in probs.items()])
    return {"holdout": summary, "holdout_by_modality": modality_means(per, kinds),
            "per_image": {r["name"]: r["dsb_score"] for r in per}}


def main() -> None:
    from _report import DSB_ZIP, MODALITY_NAMES
    from dsb_compare import paired_bootstrap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", help="run folder of the new network (same held-out images)")
    ap.add_argument("members", nargs="+", help="one-network folders of the ensemble's members (members.py); "
                                               "the new network takes the first one's place")
    ap.add_argument("--model", default="dsb2018-nuclei", help="the ensemble whose post-processing is used")
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from biounet.checkpoint import resolve_model, unseen_images
    from biounet.data.dataset import items_from_config, items_named, modality
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides, get_task

    ens = load_model(args.model)
    held = unseen_images(resolve_model(args.model))[1]
    for folder in (args.other, *args.members):
        if sorted(unseen_images(resolve_model(folder))[1]) != sorted(held):
            raise SystemExit(f"{folder}: its held-out images differ from {args.model}'s")
    task = get_task(apply_overrides(ens.config, [f"data.images={args.data}"]))
    nets = {f: load_model(f) for f in (args.other, *args.members)}
    probs: dict[str, dict[str, np.ndarray]] = {f: {} for f in nets}
    truths, kinds = {}, {}
    for item in items_named(items_from_config(task.cfg.data), held):
        img, truths[item.name] = item.load()
        kinds[item.name] = MODALITY_NAMES.get(modality(img), modality(img))
        for f, seg in nets.items():
            probs[f][item.name] = seg.predict_prepared(seg.view(img, item.name)).astype(np.float32)

    first = args.members[0]
    what = {"control": "the members as shipped", "swapped": f"{args.other} in {first}'s place",
            "first_alone": f"{first} alone", "other_alone": f"{args.other} alone"}
    results = {key: {"what": what[key], **score(task, ens.post, p, truths, kinds)}
               for key, p in swap_rows(probs, args.other, args.members).items()}
    print(f"{len(truths)} held-out images, post-processing of {args.model} (not tuned): {ens.post}")
    for r in results.values():
        s = r["holdout"]
        print(f"{r['what']}: DSB {s['dsb_score']:.4f}, AP@0.5 {s['ap50']:.4f}, AP@0.75 {s['ap75']:.4f}; "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["holdout_by_modality"].items()))
    pairs = {}  # paired bootstrap over the held-out images, as benchmarks/dsb_compare.py does for two models
    for key, (a, b) in {"swapped_vs_control": ("control", "swapped"),
                        "other_vs_first_alone": ("first_alone", "other_alone")}.items():
        names = sorted(truths)
        mean, lo, hi = paired_bootstrap(np.array([results[a]["per_image"][n] for n in names]),
                                        np.array([results[b]["per_image"][n] for n in names]))
        pairs[key] = {"mean": mean, "ci95": [lo, hi]}
        print(f"{results[b]['what']} - {results[a]['what']}: {mean:+.4f}, 95 % interval [{lo:+.4f}, {hi:+.4f}]")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "other": args.other, "members": args.members,
                                         "post": ens.post.__dict__, "results": results, "paired": pairs},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
