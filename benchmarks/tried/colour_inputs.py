"""Stained tissue scores a third of fluorescence (issue #13): are its nucleus pixels harder to tell apart, or its nuclei?

    .venv/bin/python benchmarks/tried/colour_inputs.py [--every 1] [--json out.json]

Three inputs other than the shipped one were tried for stained images (3-channel colour, H&E stain jitter, a
test-time gamma) and none lifted them. This asks, without training anything, whether any input could: for
every image of the data it measures the pixel AUC (the chance that a random nucleus pixel scores above a
random other pixel; 1 separates them perfectly) of
  - red: the red channel, what the network reads for stained images (``normalize = "nuclei"`` is monotone in it);
  - gray: the channel mean;
  - H: the hematoxylin density of scikit-image's colour deconvolution (``rgb2hed``), the nuclear stain alone;
  - best linear: the image's RGB projected on the Fisher direction fitted to that image's own truth, an
    oracle bound for any per-pixel linear colour input;
and, on the model's unseen images (validation and held-out), the AUC of its nucleus probability
(1 - background). Dark-background images count bright pixels as nuclei, the others dark ones.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

INPUTS = ("red", "gray", "H", "best linear")
PIXELS = 20000  # sampled per image: on 12 stained images their AUC was within 0.0021 of all pixels'


def pixel_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """P(score of a truth pixel > score of a non-truth pixel), ties half: the Mann-Whitney U over n1 * n0."""
    from scipy.stats import mannwhitneyu

    pos, neg = score[truth], score[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def fisher_direction(rgb: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(3,) Fisher discriminant direction of nucleus against other pixels, oriented so nuclei project higher."""
    pos, neg = rgb[truth], rgb[~truth]
    within = np.cov(pos, rowvar=False) + np.cov(neg, rowvar=False) + 1e-6 * np.eye(rgb.shape[1])
    return np.linalg.solve(within, pos.mean(0) - neg.mean(0))


def input_scores(rgb: np.ndarray, truth: np.ndarray, dark: bool) -> dict[str, float]:
    """Pixel AUC of each of :data:`INPUTS` on sampled pixels ``rgb`` (N, 3) with ``truth`` (N,)."""
    from skimage.color import rgb2hed

    sign = 1.0 if dark else -1.0
    hed = rgb2hed(rgb[None] / max(float(rgb.max()), 1.0))[0]  # a common scale only shifts H by a constant
    return {"red": pixel_auc(sign * rgb[:, 0], truth), "gray": pixel_auc(sign * rgb.mean(1), truth),
            "H": pixel_auc(-sign * hed[:, 0], truth), "best linear": pixel_auc(rgb @ fisher_direction(rgb, truth), truth)}


def sample(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Flat indices of up to :data:`PIXELS` pixels of an image of ``shape``, the same for every input."""
    n = shape[0] * shape[1]
    return np.random.default_rng(seed).choice(n, min(PIXELS, n), replace=False)


def main() -> None:
    from _report import MODALITY_NAMES, split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--every", type=int, default=1, help="measure the inputs on every n-th image (1: all)")
    args = ap.parse_args()

    from _report import held_out_split
    from biounet.data.dataset import modality

    sp = held_out_split(args.model, args.data)
    unseen = set(sp.validation) | set(sp.held_out)
    rows = []
    for item in sp.items[::args.every]:
        img, lab = item.load()
        rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
        kind = modality(img)
        idx = sample(lab.shape)
        truth = (lab > 0).ravel()[idx]
        row = {"name": item.name, "modality": kind,
               **input_scores(rgb.reshape(-1, 3)[idx].astype(np.float64), truth, kind == "dark")}
        if item.name in unseen:
            probs = sp.seg.predict(img, item.name)
            row["network"] = pixel_auc((1 - probs[0]).ravel()[idx], truth)
        rows.append(row)

    cols = [*INPUTS, "network"]
    summary: dict[str, dict] = {}
    print(f"{args.model}: pixel AUC, mean over images (the network: on its {len(unseen)} unseen images only)")
    print("| modality | images | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 2))
    for kind in sorted({r["modality"] for r in rows}):
        for part in ("all", "unseen"):
            mine = [r for r in rows if r["modality"] == kind and (part == "all" or "network" in r)]
            if not mine:
                continue
            means = {c: float(np.nanmean([r[c] for r in mine])) if all(c in r for r in mine) else None
                     for c in cols}
            summary.setdefault(MODALITY_NAMES[kind], {})[part] = {"images": len(mine), **means}
            cells = ["" if v is None else f"{v:.3f}" for v in means.values()]
            print(f"| {MODALITY_NAMES[kind]}, {part} | {len(mine)} | " + " | ".join(cells) + " |")
    colour = [r for r in rows if r["modality"] == "colour"]
    if colour:
        print(f"H above red on {sum(r['H'] > r['red'] for r in colour)} of {len(colour)} stained images")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "every": args.every, "pixels_per_image": PIXELS,
                                         "by_modality": summary, "images": rows}, indent=1))


if __name__ == "__main__":
    main()
