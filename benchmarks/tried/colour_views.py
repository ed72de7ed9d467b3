"""How well each 1-channel view of stained images separates nucleus from background pixels (issue #13).

    .venv/bin/python benchmarks/tried/colour_views.py

On the shipped model's training images of the colour modality (its validation and held-out images are
left out), per image: the probability that a random nucleus pixel is brighter than a random background
pixel (pixel AUC, 3000 of each, seeded) in the red, green, gray, hematoxylin (rgb2hed) and min/max views.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random ``pos`` value > a random ``neg`` value), from ranks (Mann-Whitney U)."""
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    from skimage.color import rgb2gray, rgb2hed

    from biounet.checkpoint import resolve_model, unseen_images, validation_names
    from biounet.data.dataset import items_from_config, modality
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides

    run = resolve_model("dsb2018-nuclei")
    skip = set(validation_names(run)) | set(unseen_images(run)[1])
    cfg = apply_overrides(load_model("dsb2018-nuclei").config,
                          [f"data.images={ROOT.parent / 'shared/data/dsb2018/stage1_train.zip'}"])
    rng = np.random.default_rng(0)
    res: dict[str, list[float]] = {}
    for item in items_from_config(cfg.data):
        if item.name in skip:
            continue
        img, lab = item.load()
        if modality(img) != "colour":
            continue
        rgb = img[..., :3].astype(np.float32) / 255
        views = {"red (inverted)": 1 - rgb[..., 0], "green (inverted)": 1 - rgb[..., 1],
                 "gray (inverted)": 1 - rgb2gray(rgb), "hematoxylin (rgb2hed)": rgb2hed(rgb)[..., 0],
                 "1 - min channel": 1 - rgb.min(-1), "1 - max channel": 1 - rgb.max(-1)}
        fg = lab > 0
        pi = rng.choice(fg.sum(), min(3000, fg.sum()), replace=False)
        ni = rng.choice((~fg).sum(), 3000, replace=False)
        for name, v in views.items():
            res.setdefault(name, []).append(auc(v[fg][pi], v[~fg][ni]))
    print(f"{len(next(iter(res.values())))} colour training images")
    for name, v in res.items():
        v = np.array(v)
        print(f"{name:24s} mean AUC {v.mean():.3f}  min {v.min():.3f}  images below 0.9: {(v < 0.9).sum()}")


if __name__ == "__main__":
    main()
