"""Average a model with a network that reads its images differently (e.g. 3-channel colour), weighted.

    .venv/bin/python benchmarks/tried/mix_inputs.py runs/nuclei-rgb --weights 0,0.25,0.4 --json out.json

`biounet ensemble` needs members that share their input (channels, normalisation); this tries, before
building that, whether a differently-fed network would add to the shipped model. Each network reads
each image its own way; their probabilities are averaged with weight w on the other network. For every
w the post-processing is tuned on the validation images (the task's grid, as training does) and the
held-out images are scored once, per modality. w = 0 is the shipped model retuned, the control.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", help="run folder of the differently-fed network (same validation and held-out images)")
    ap.add_argument("--model", default="dsb2018-nuclei")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018/stage1_train.zip"))
    ap.add_argument("--weights", default="0,0.25,0.4", help="weights of the other network, comma-separated")
    ap.add_argument("--cache", type=Path, help="the model's probabilities, as benchmarks/dsb_split.py caches them")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from _report import modality_means
    from dsb_split import cached_predictions
    from biounet.checkpoint import resolve_model, unseen_images, validation_names
    from biounet.data.dataset import items_from_config
    from biounet.metrics.instance import evaluate_instances
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides, get_task
    from biounet.tune import tune_post

    base, other = load_model(args.model), load_model(args.other)
    for part, names in (("validation", validation_names), ("held-out", lambda r: unseen_images(r)[1])):
        if list(names(resolve_model(args.model))) != list(names(resolve_model(args.other))):
            raise SystemExit(f"{args.other}: its {part} images differ from {args.model}'s")
    data = cached_predictions(args.model, args.data, args.cache)
    items = {it.name: it for it in items_from_config(
        apply_overrides(other.config, [f"data.images={args.data}"]).data)}
    theirs = {}
    for part in ("val", "held"):
        for name, _, _, _ in data[part]:
            img, _ = items[name].load()
            theirs[name] = other.predict_prepared(other.view(img, name))
    task = get_task(apply_overrides(base.config, [f"data.images={args.data}"]))
    kinds = {n: k for n, _, _, k in data["held"]}
    results = {}
    for w in (float(v) for v in args.weights.split(",")):
        mix = {n: (1 - w) * p.astype(np.float32) + w * theirs[n] for part in data.values() for n, p, _, _ in part}
        post, val = tune_post(task, [(n, mix[n], t) for n, _, t, _ in data["val"]], base.post)
        summary, per = evaluate_instances([(n, t, task.segment(mix[n], post)) for n, _, t, _ in data["held"]])
        results[w] = {"validation": val["dsb"], "holdout": summary, "post": post.__dict__,
                      "holdout_by_modality": modality_means(per, kinds)}
        print(f"w = {w}: validation {val['dsb']:.4f}, held-out {summary['dsb_score']:.4f} "
              f"(AP@0.5 {summary['ap50']:.4f}, AP@0.75 {summary['ap75']:.4f}), "
              + ", ".join(f"{k} {v:.3f}" for k, v in results[w]["holdout_by_modality"].items()))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "other": args.other, "results": results},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
