"""What one training patch costs the loader, per augmentation setting, all in one run on this machine.

    .venv/bin/python benchmarks/sampler.py                                 # configs/dsb2018.toml, 40 DSB images
    .venv/bin/python benchmarks/sampler.py --patches 100 --json out.json

Times ``PatchDataset[i]`` (draw, crop, augment, training target; the images decoded and normalised
beforehand, as the training cache holds them) for the config as it is and for each variant below, the
variants taken in turns (round 1 of every variant, then round 2, ...) so that the machine's drift hits
them alike, and prints the mean milliseconds per patch of the best round with the ratio to the config as
it is. One process, one thread: what ``data.num_workers = 0`` feeds a training step with.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DSB_ZIP = ROOT.parent / "shared/data/dsb2018/stage1_train.zip"

VARIANTS = {
    "no augmentation": ["augment.flips=false", "augment.affine=false", "augment.elastic=false",
                        "augment.intensity=false"],
    "augment.elastic=false": ["augment.elastic=false"],
    "augment.context=true": ["augment.context=true"],
    "augment.context=true, scale_range=[0.6,1.67]": ["augment.context=true", "augment.scale_range=[0.6,1.67]"],
}


def patch_ms(datasets: dict[str, object], patches: int, rounds: int) -> dict[str, float]:
    """Milliseconds per ``ds[i]`` for each dataset, ``patches`` per round, best of ``rounds`` interleaved rounds."""
    best = {name: float("inf") for name in datasets}
    for ds in datasets.values():  # warm-up: first calls pay for imports and caches
        for i in range(3):
            ds[i]
    for r in range(rounds):
        for name, ds in datasets.items():
            ds.epoch_seed = r  # other patches each round, the same ones for every variant
            t0 = time.perf_counter()
            for i in range(patches):
                ds[i]
            best[name] = min(best[name], (time.perf_counter() - t0) / patches * 1000)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/dsb2018.toml"))
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--images", type=int, default=40, help="images the patches are drawn from")
    ap.add_argument("--patches", type=int, default=50, help="patches per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from biounet.data.dataset import PatchDataset, items_from_config
    from biounet.tasks import apply_overrides, get_task, load_config

    torch.set_num_threads(1)
    cfg = apply_overrides(load_config(args.config), [f"data.images={args.data}",
                                                      f"data.patches_per_epoch={args.patches}"])
    items = items_from_config(cfg.data)[:args.images]
    first = PatchDataset(items, get_task(cfg))
    for i in range(len(items)):
        first.load(i)  # decode once; every variant shares the decoded images
    datasets = {"the config as it is": first}
    for name, sets in VARIANTS.items():
        ds = PatchDataset(items, get_task(apply_overrides(cfg, sets)))
        ds._cache = first._cache
        datasets[name] = ds
    ms = patch_ms(datasets, args.patches, args.rounds)
    base = ms["the config as it is"]
    side = cfg.data.patch_size
    print(f"{args.config}: {side}x{side} patches from {len(items)} images, {args.patches} per round, "
          f"best of {args.rounds} rounds")
    print("| sampler | ms per patch | x the config |\n|---|---|---|")
    for name, v in ms.items():
        print(f"| {name} | {v:.1f} | {v / base:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "images": len(items), "patch_size": side,
                                         "ms_per_patch": ms, "variants": VARIANTS}, indent=2))


if __name__ == "__main__":
    main()
