"""Does fine-tuning on a few images of a new experiment pay? (issue #49)

The user's situation, measured: a model that never saw an experiment (a leave-groups-out run of
``benchmarks/generalize.py``) is fine-tuned with ``biounet finetune``'s recipe, as a user runs it, on
k images of one left-out group, and scored on that group's other images (never trained on). Before /
after / minutes per group and k, and a control row: the same recipe from random weights on the
same k images (what the pretrained weights bring).

    python benchmarks/finetune.py --model runs/g0-base --groups colour-256x320-l,fluo-360x360-l \\
        --k 1,3,5 --minutes 2 --json benchmarks/results-finetune.json

With ``--groups worst:N`` the N left-out groups the starting model scores worst on are taken (from a
generalize.py JSON given by ``--from-json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DSB_ZIP, markdown_table, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def random_start(model: str, folder: Path) -> Path:
    """A copy of ``model``'s folder with freshly initialised weights: the from-scratch control."""
    import torch

    from biounet import checkpoint
    from biounet.models.unet import UNet

    src = checkpoint.resolve_model(model)
    cfg = checkpoint.load_config(src)
    torch.manual_seed(0)
    import dataclasses

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, members=1))
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save_config(folder, cfg)
    checkpoint.save_weights(folder / checkpoint.WEIGHTS, UNet(cfg.model))
    checkpoint.save_post(folder, checkpoint.load_post(src, cfg.post))
    checkpoint.save_metrics(folder, checkpoint.RunMetrics(object_diameter=checkpoint.load_metrics(src).object_diameter))
    return folder


def group_items(data: str, model: str, group: str) -> list:
    from biounet.checkpoint import load_config, resolve_model
    from biounet.data.dataset import items_from_config, read_groups
    from biounet.tasks import apply_overrides

    cfg = apply_overrides(load_config(resolve_model(model)), [f"data.images={data}"]).data
    groups_csv = Path(cfg.groups) if Path(cfg.groups).exists() else ROOT / (cfg.groups or "configs/dsb2018-groups.csv")
    groups = read_groups(groups_csv)
    items = [it for it in items_from_config(cfg) if groups.get(it.name) == group]
    if not items:
        raise SystemExit(f"no image of group {group!r} in {data}")
    return items


def score_on(model_dir: str | Path, items: list) -> dict:
    from biounet.metrics.instance import evaluate_instances
    from biounet.predict import load_model

    seg = load_model(model_dir)
    preds = []
    for it in items:
        image, truth = it.load()
        preds.append((it.name, truth, seg.segment(image, it.name)))
    s = evaluate_instances(preds)[0]
    return {"dsb_score": round(s["dsb_score"], 4), "ap50": round(s["ap50"], 4)}


def one(start: str, items: list, k: int, minutes: float, seed: int, work: Path) -> dict:
    """Fine-tune ``start`` on the first k of ``items`` (a seeded order); score on the rest."""
    from biounet.finetune import finetune

    order = np.random.default_rng(seed).permutation(len(items))
    train, rest = [items[i] for i in order[:k]], [items[i] for i in order[k:]]
    pairs = [it.load() for it in train]
    t0 = time.perf_counter()
    out = work / f"ft-{Path(start).name}-{k}-{seed}"
    res = finetune(start, pairs, out, minutes=minutes, overwrite=True, seed=seed, bar=False)
    minutes_taken = (time.perf_counter() - t0) / 60
    return {"k": k, "train": [it.name for it in train], "scored": len(rest), "after": score_on(out, rest),
            "minutes": round(minutes_taken, 2), "steps": res.steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/g0-base", help="the starting model: a run that never saw the groups")
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--groups", required=True, help="comma-separated groups, or worst:N with --from-json")
    ap.add_argument("--from-json", type=Path, help="a generalize.py JSON (for --groups worst:N)")
    ap.add_argument("--k", default="1,3,5")
    ap.add_argument("--minutes", type=float, default=10.0, help="fine-tuning budget per run (the CLI's default: 10)")
    ap.add_argument("--scratch-k", type=int, default=5, help="k of the from-scratch control row (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.groups.startswith("worst:"):
        res = json.loads(args.from_json.read_text())["results"]
        mine = next(r for r in res if Path(r["model"]).name == Path(args.model).name)
        by = mine["modes"]["auto"]["left_out"]["by_group"]
        groups = sorted(by, key=by.get)[: int(args.groups.split(":")[1])]
    else:
        groups = [g for g in args.groups.split(",") if g]
    ks = [int(k) for k in args.k.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="biounet-ft-") as tmp:
        work = Path(tmp)
        scratch = random_start(args.model, work / "scratch-start") if args.scratch_k else None
        for g in groups:
            items = group_items(args.data, args.model, g)
            order = np.random.default_rng(args.seed).permutation(len(items))
            row = {"group": g, "images": len(items), "runs": []}
            for k in ks:
                rest = [items[i] for i in order[k:]]
                r = one(args.model, items, k, args.minutes, args.seed, work)
                r["before"] = score_on(args.model, rest)
                row["runs"].append(r)
                print(f"  {g} k={k}: {r}", file=sys.stderr, flush=True)
            if scratch is not None:
                r = one(str(scratch), items, args.scratch_k, args.minutes, args.seed, work)
                r["from_scratch"] = True
                row["runs"].append(r)
                print(f"  {g} scratch k={args.scratch_k}: {r}", file=sys.stderr, flush=True)
            results.append(row)
    rows = []
    for row in results:
        for r in row["runs"]:
            what = "from scratch" if r.get("from_scratch") else Path(args.model).name
            before = r.get("before", {}).get("dsb_score", "")
            lift = round(r["after"]["dsb_score"] - before, 4) if before != "" else ""
            rows.append([row["group"], r["k"], what, r["scored"], before, r["after"]["dsb_score"], lift, r["minutes"]])
    print(markdown_table(["group", "k", "start", "scored images", "DSB before", "DSB after", "lift", "minutes"], rows))
    if args.json:
        args.json.write_text(json.dumps({**provenance(sys.argv, vars(args)), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
