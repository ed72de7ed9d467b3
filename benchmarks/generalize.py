"""Leave-groups-out evaluation: how a model does on experiments it never saw (a new lab's images).

The DSB 2018 images are grouped by experiment once, in ``configs/dsb2018-groups.csv``
(``benchmarks/dsb_groups.py``). A run trained with ``data.exclude_groups`` never trained or
validated on those groups; this script scores it on every image of them, per group and per
modality, and on the run's own random-split held-out images (less those groups) for comparison.
Both with the size estimate (``--diameter auto``) and without (``none``); ``--modes oracle`` resizes each
image by its true median nucleus diameter: what a perfect size estimate could give.

Train the runs it compares (the group fold of record is ``FOLD0``; ``--print-commands`` prints them):

    biounet train --config configs/dsb2018-quick.toml --set data.groups=configs/dsb2018-groups.csv \\
        --set 'data.exclude_groups=[...FOLD0...]' --set train.epochs=30 --out runs/g0-base
    ... the same with wide scale (0.33-3x, context) and augment.degrade --out runs/g0-robust (first try)
    ... the same with augment.degrade and augment.uneven --out runs/g0-uneven (configs/dsb2018-robust.toml's)
    ... g0-base again with --set train.seed=1 --set data.split_seed=0 --out runs/g0-base-s1 (the seed spread)

then

    python benchmarks/generalize.py --model runs/g0-base --model runs/g0-base-s1 --model runs/g0-robust \
        --model runs/g0-uneven --modes none,auto,oracle --json benchmarks/results-generalize.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DSB_ZIP, MODALITY_NAMES, markdown_table, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# fold 0 of record: one group of each kind the issue saw fail (an unseen modality, large stained nuclei,
# large fluorescent nuclei, dim dense fluorescence, the odd sizes), 98 of the 564 images
FOLD0 = ("bright-1024x1024", "colour-256x320-l", "fluo-360x360-l", "fluo-520x696-s", "fluo-other")


def fold_commands(groups: tuple[str, ...] = FOLD0, epochs: int = 30) -> list[str]:
    """The training commands whose runs this script compares: today's recipe, the robust one (wide scale,
    other labs' intensities) and the uneven one (other labs' intensities, uneven light and plateaus)."""
    ex = json.dumps(list(groups)).replace(" ", "")
    common = (f"biounet train --config configs/dsb2018-quick.toml --set data.groups=configs/dsb2018-groups.csv "
              f"--set 'data.exclude_groups={ex}' --set train.epochs={epochs}")
    robust = "--set augment.scale_range=[0.33,3] --set augment.context=true --set augment.degrade=true"
    uneven = "--set augment.degrade=true --set augment.uneven=true"
    return [f"{common} --out runs/g0-base", f"{common} {robust} --out runs/g0-robust",
            f"{common} {uneven} --out runs/g0-uneven",
            f"{common} --set train.seed=1 --set data.split_seed=0 --out runs/g0-base-s1"]


def oracle_diameter(seg, truth: np.ndarray) -> float:
    """The median true object diameter of an image, kept within the resize --diameter allows."""
    from biounet.size import MAX_SCALE, object_diameters

    d = object_diameters(truth)
    if not len(d) or not seg.train_diameter:  # nothing to measure: as --diameter none would
        return seg.train_diameter or None
    return float(np.clip(np.median(d), seg.train_diameter / MAX_SCALE, seg.train_diameter * MAX_SCALE))


def score(seg, items: list, groups: dict[str, str], oracle: bool = False) -> dict:
    """DSB score / AP@0.5 over ``items``, and per group and per modality. ``oracle``: each image resized by
    its true median nucleus diameter, a perfect size estimate (what better size estimation could give)."""
    from biounet.data.dataset import modality
    from biounet.metrics.instance import evaluate_instances

    preds, kinds = [], {}
    for item in items:
        image, truth = item.load()
        kinds[item.name] = MODALITY_NAMES[modality(image)]
        s = seg.with_options(diameter=oracle_diameter(seg, truth)) if oracle else seg
        preds.append((item.name, truth, s.segment(image, item.name)))
    summary, per_image = evaluate_instances(preds)
    by = {"group": defaultdict(list), "modality": defaultdict(list)}
    for r in per_image:
        by["group"][groups.get(r["name"], "?")].append(r["dsb_score"])
        by["modality"][kinds[r["name"]]].append(r["dsb_score"])
    return {"images": len(items), "dsb_score": round(summary["dsb_score"], 4), "ap50": round(summary["ap50"], 4),
            **{f"by_{k}": {g: round(float(np.mean(v)), 4) for g, v in sorted(d.items())} for k, d in by.items()}}


def evaluate(model: str, data: str, modes: list[str]) -> dict:
    from biounet.checkpoint import resolve_model, unseen_images
    from biounet.data.dataset import items_from_config, items_named, read_groups
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides

    seg = load_model(model)
    cfg = apply_overrides(seg.config, [f"data.images={data}"]).data
    left_out = tuple(cfg.exclude_groups)
    if not left_out:
        raise SystemExit(f"{model}: trained on every group (no data.exclude_groups); nothing to score it on honestly")
    groups_csv = Path(cfg.groups) if Path(cfg.groups).exists() else ROOT / cfg.groups  # relative to the repo
    groups = read_groups(groups_csv)
    items = items_from_config(cfg)
    unseen = [it for it in items if groups.get(it.name) in left_out]
    kind, held_names = unseen_images(resolve_model(model))
    held = items_named(items, held_names) if kind == "holdout" else []
    out = {"model": model, "left_out_groups": list(left_out), "modes": {}}
    for mode in modes:
        s = seg.with_options(diameter="auto" if mode == "auto" else None)
        o = mode == "oracle"
        out["modes"][mode] = {"left_out": score(s, unseen, groups, o),
                              **({"held_out": score(s, held, groups, o)} if held else {})}
        print(f"  {Path(model).name} {mode}: {out['modes'][mode]}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="run folder trained with data.exclude_groups (repeat)")
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--modes", default="auto,none", help="auto (the size estimate), none (native), oracle "
                    "(each image resized by its true median nucleus diameter: a perfect estimate)")
    ap.add_argument("--print-commands", action="store_true", help="print the training commands of fold 0 and stop")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.print_commands or not args.model:
        print("\n".join(fold_commands()))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    results = [evaluate(m, args.data, modes) for m in args.model]
    groups = sorted({g for r in results for g in r["left_out_groups"]})
    rows = []
    for r in results:
        for mode, res in r["modes"].items():
            lo = res["left_out"]
            rows.append([f"{Path(r['model']).name} ({mode})", lo["dsb_score"], lo["ap50"],
                         *[lo["by_group"].get(g, "") for g in groups],
                         res.get("held_out", {}).get("dsb_score", "")])
    print(f"DSB score on {results[0]['modes'][modes[0]]['left_out']['images']} images of groups never trained on\n")
    print(markdown_table(["model (--diameter)", "left-out DSB", "AP@0.5", *groups, "random held-out"], rows))
    if args.json:
        payload = {**provenance(sys.argv, vars(args)), "results": results}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
