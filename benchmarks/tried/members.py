"""Write each network of an ensemble model as a one-network model folder, so one member can be swapped.

    .venv/bin/python benchmarks/tried/members.py dsb2018-nuclei runs/ship-m    # -> runs/ship-m1, -m2, -m3
    biounet ensemble runs/nuclei-stain runs/ship-m2 runs/ship-m3 --out runs/ens-stain

`biounet ensemble` takes whole ensembles (every network one vote); this is for trying a network in
place of one member when the member runs are gone. Each folder gets the ensemble's config with
``model.members = 1``, the member's weights, the ensemble's validation and held-out image names, and
the member's training record (as ``record`` in metrics.json).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="shipped model name or ensemble folder")
    ap.add_argument("prefix", help="output folders are <prefix>1, <prefix>2, ...")
    args = ap.parse_args()

    from biounet import checkpoint
    from biounet.tune import member_networks

    folder = checkpoint.resolve_model(args.model)
    cfg = checkpoint.load_config(folder)
    if cfg.model.members < 2:
        raise SystemExit(f"{folder}: not an ensemble (model.members = {cfg.model.members})")
    nets, records = member_networks(folder, cfg)  # what `biounet ensemble` reads from such a folder
    metrics = checkpoint.read_metrics(folder)
    kept = {k: metrics[k] for k in ("val_items", "holdout_items") if k in metrics}
    one = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, members=1))
    for i, (net, record) in enumerate(zip(nets, records), start=1):
        out = Path(f"{args.prefix}{i}")
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.save_config(out, one)
        checkpoint.save_weights(out / checkpoint.WEIGHTS, net)  # a member is a one-network U-Net already
        checkpoint.write_metrics(out, {**kept, "record": record})
        print(out, record.get("run", ""))


if __name__ == "__main__":
    main()
