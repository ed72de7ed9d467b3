"""Group the DSB 2018 training images by experiment, once, into ``configs/dsb2018-groups.csv``.

A random image split puts images of one experiment (one microscope, magnification and stain) on
both sides and flatters every model; leave-groups-out evaluation (``benchmarks/generalize.py``)
needs the experiments. DSB 2018 does not name them, so they are recovered from what an experiment
fixes: the modality (:func:`biounet.data.dataset.modality`) and the image size; a (modality, size)
key holding more than ``SPLIT_ABOVE`` images is split into three by k-means on the log median
nucleus diameter (magnification) and log mean intensity (exposure, stain), standardised; a
cluster smaller than ``MIN_GROUP`` joins its nearest; keys with fewer than ``MIN_GROUP`` images
are pooled per modality as ``<modality>-other``. Subgroups are named by diameter, small to large.

The CSV is the grouping of record (the repo keeps it; rerun only to check it is reproduced):

    python benchmarks/dsb_groups.py [--data stage1_train.zip] [--out configs/dsb2018-groups.csv]
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DSB_ZIP = ROOT.parent / "shared/data/dsb2018/stage1_train.zip"
SPLIT_ABOVE = 60
MIN_GROUP = 6
NAMES = {"dark": "fluo", "bright": "bright", "colour": "colour"}
COLUMNS = ("image", "group", "modality", "height", "width", "median_diameter", "mean_intensity", "objects")


def image_features(image: np.ndarray, labels: np.ndarray) -> dict:
    """What an experiment fixes, of one image: modality, size, median nucleus diameter, mean intensity."""
    from biounet.data.dataset import modality

    gray = image if image.ndim == 2 else image[..., :3].mean(axis=-1)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    diameter = float(np.median(2 * np.sqrt(areas / np.pi))) if len(areas) else 0.0
    return {"modality": modality(image), "height": image.shape[0], "width": image.shape[1],
            "median_diameter": round(diameter, 2), "mean_intensity": round(float(gray.mean()), 2),
            "objects": int(len(areas))}


def cluster(rows: list[dict], k: int = 3) -> list[int]:
    """k-means labels (seeded) on standardised (log diameter, log mean intensity); small clusters merged."""
    from scipy.cluster.vq import kmeans2

    x = np.array([[np.log(max(r["median_diameter"], 1.0)), np.log(r["mean_intensity"] + 1.0)] for r in rows])
    xs = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    centres, labels = kmeans2(xs, k, seed=0, minit="++")
    sizes = np.bincount(labels, minlength=k)
    for small in np.flatnonzero(sizes < MIN_GROUP):
        others = [j for j in range(k) if sizes[j] >= MIN_GROUP]
        nearest = min(others, key=lambda j: float(((centres[j] - centres[small]) ** 2).sum()))
        labels[labels == small] = nearest
    return labels.tolist()


def assign_groups(rows: list[dict]) -> list[str]:
    """The group name of each row (``rows``: :func:`image_features` plus ``image``)."""
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_key[(r["modality"], r["height"], r["width"])].append(i)
    groups = [""] * len(rows)
    for (mod, h, w), idx in by_key.items():
        base = f"{NAMES[mod]}-{h}x{w}"
        if len(idx) < MIN_GROUP:
            for i in idx:
                groups[i] = f"{NAMES[mod]}-other"
            continue
        if len(idx) <= SPLIT_ABOVE:
            for i in idx:
                groups[i] = base
            continue
        labels = cluster([rows[i] for i in idx])
        # name the clusters by their median diameter, small to large
        med = {c: np.median([rows[i]["median_diameter"] for i, l in zip(idx, labels) if l == c]) for c in set(labels)}
        suffix = dict(zip(sorted(med, key=med.get), ("s", "m", "l") if len(med) == 3 else ("s", "l")))
        for i, l in zip(idx, labels):
            groups[i] = f"{base}-{suffix[l]}"
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--out", type=Path, default=ROOT / "configs/dsb2018-groups.csv")
    args = ap.parse_args(argv)
    from biounet.data.dataset import dsb_items

    rows = []
    for item in dsb_items(args.data):
        image, labels = item.load()
        rows.append({"image": item.name, **image_features(image, labels)})
    for r, g in zip(rows, assign_groups(rows)):
        r["group"] = g
    rows.sort(key=lambda r: (r["group"], r["image"]))
    tmp = args.out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(args.out)
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["group"]] += 1
    for g, n in sorted(counts.items()):
        print(f"{g:24s} {n:4d}")
    print(f"{len(rows)} images in {len(counts)} groups -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
