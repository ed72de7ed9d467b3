"""Robustness table: a model's DSB score on its unseen images transformed the way other labs' images
differ (magnification, exposure, contrast, noise, focus), one row per model and size mode.

    python benchmarks/robustness.py                                     # the shipped model, held-out images
    python benchmarks/robustness.py --model runs/a --model runs/b --json out.json
    python benchmarks/robustness.py --split val --transforms native,x0.33,x0.5,x2,x3   # size-estimate error

Each image and its truth are transformed together (sizes: bilinear image, each object's mask resized
the same way and kept where it covers half a pixel, :func:`resize_labels`;
intensity changes on the image only, seeded per image), predicted with ``--diameter auto`` (the
default) and with ``none``, and scored against the transformed truth. Besides the score, each
resized row reports the size estimate's error, the median over images of |log(estimated /
true median nucleus diameter)| (0.18 = 20 %), and the seconds per image, so the cost of the
estimate reads as the ratio of the two modes' times in the same run. ``--modes oracle`` resizes each
image by its true median nucleus diameter: how far a perfect size estimate would go at each transform.
``--modes ceiling`` segments each image at its own size (``--diameter none``) and resizes those labels as
the truth is resized (:func:`ceiling_labels`): the score a method would get that segmented a resized image
exactly as well as the original. Below native, what the resize itself costs the metric.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DSB_ZIP, markdown_table, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TRANSFORMS = ("native", "x0.25", "x0.33", "x0.5", "x2", "x3", "x4", "gamma0.5", "gamma2", "contrast0.3",
              "poisson", "gauss", "blur2")
DEFAULT = ("native", "x0.25", "x0.5", "x2", "x3", "x4", "gamma0.5", "gamma2", "contrast0.3", "poisson", "gauss",
           "blur2")


def transform(image: np.ndarray, truth: np.ndarray, name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image, truth)`` as another lab might have recorded them; the image stays uint8.

    ``xF`` resizes by F; ``gammaG`` raises [0, 1] intensities to G; ``contrast0.3`` shrinks the
    spread about the mean to 0.3; ``poisson`` draws 20 photons at full scale; ``gauss`` adds noise of
    standard deviation 0.05 of full scale; ``blur2`` is a Gaussian blur of sigma 2 px.
    """
    from scipy import ndimage as ndi
    from skimage.transform import resize

    if name == "native":
        return image, truth
    if name.startswith("x"):
        f = float(name[1:])
        shape = (max(1, round(truth.shape[0] * f)), max(1, round(truth.shape[1] * f)))
        img = resize(image, shape + image.shape[2:], order=1, anti_aliasing=f < 1, preserve_range=True)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), resize_labels(truth, shape)
    x = image.astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    if name.startswith("gamma"):
        x = x ** float(name[5:])
    elif name == "contrast0.3":
        x = (x - x.mean()) * 0.3 + x.mean()
    elif name == "poisson":
        x = rng.poisson(x * 20.0) / 20.0
    elif name == "gauss":
        x = x + rng.normal(0.0, 0.05, x.shape)
    elif name == "blur2":
        x = ndi.gaussian_filter(x, sigma=(2, 2, 0)[: x.ndim])
    else:
        raise ValueError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), truth


def resize_labels(truth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``truth`` on a ``shape`` grid as the image is resized: each object's mask resampled the way the image
    is (bilinear, Gaussian anti-aliasing when shrinking, pixel centres mapped as skimage's ``resize`` maps
    them), and a pixel given to the object that covers at least half of it.

    Nearest-neighbour resizing is not this: shrinking x0.5 it keeps one pixel of each 2 x 2 block, which
    shifts every object half an original pixel from where the image shows it, and a perfect answer would
    score a DSB of only 0.79 against it (0.73 at x0.25; docs/generalization.md).
    """
    from scipy import ndimage as ndi

    h, w = truth.shape
    fy, fx = shape[0] / h, shape[1] / w
    sigma = (max(0.0, (1 / fy - 1) / 2), max(0.0, (1 / fx - 1) / 2))  # skimage's anti-aliasing
    out = np.zeros(shape, truth.dtype)
    cover = np.zeros(shape, np.float32)
    for k, box in enumerate(ndi.find_objects(truth), start=1):
        if box is None:
            continue
        pad = [int(np.ceil(3 * s)) + 2 for s in sigma]
        y0, x0 = max(0, box[0].start - pad[0]), max(0, box[1].start - pad[1])
        y1, x1 = min(h, box[0].stop + pad[0]), min(w, box[1].stop + pad[1])
        m = (truth[y0:y1, x0:x1] == k).astype(np.float32)
        if any(sigma):
            m = ndi.gaussian_filter(m, sigma, mode="constant")
        # output pixels whose centres map into the crop (out i <- in (i + 0.5) / f - 0.5), and at the image's
        # edges those mapping just beyond it, as the image's resize samples them (edge pixels extended)
        oy0 = 0 if y0 == 0 else int(np.ceil((y0 + 0.5) * fy - 0.5))
        ox0 = 0 if x0 == 0 else int(np.ceil((x0 + 0.5) * fx - 0.5))
        oy1 = shape[0] if y1 == h else min(shape[0], int(np.floor((y1 - 0.5) * fy - 0.5)) + 1)
        ox1 = shape[1] if x1 == w else min(shape[1], int(np.floor((x1 - 0.5) * fx - 0.5)) + 1)
        if oy1 <= oy0 or ox1 <= ox0:
            continue
        yy = (np.arange(oy0, oy1) + 0.5) / fy - 0.5 - y0
        xx = (np.arange(ox0, ox1) + 0.5) / fx - 0.5 - x0
        v = ndi.map_coordinates(m, np.meshgrid(yy, xx, indexing="ij"), order=1, mode="nearest")
        win = (v >= 0.5) & (v > cover[oy0:oy1, ox0:ox1])
        out[oy0:oy1, ox0:ox1][win] = k
        cover[oy0:oy1, ox0:ox1] = np.maximum(cover[oy0:oy1, ox0:ox1], v)
    return out


def ceiling_labels(native_labels: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    """The labels of the untransformed image carried onto the transformed one's grid: for a resize, by
    :func:`resize_labels`, as the truth is; other transforms keep the grid and the labels."""
    return resize_labels(native_labels, shape) if name.startswith("x") else native_labels


def true_diameter(truth: np.ndarray) -> float:
    from biounet.size import object_diameters

    d = object_diameters(truth)
    return float(np.median(d)) if len(d) else 0.0


def score_model(model: str, data: str, split: str, names_from: str, transforms: list[str], modes: list[str],
                limit: int, drop_groups: tuple[str, ...] = ()) -> dict:
    """Scores of one model on the unseen images of ``names_from``'s run, per size mode and transform."""
    from biounet.checkpoint import resolve_model, unseen_images, validation_names
    from biounet.data.dataset import items_from_config, items_named
    from biounet.metrics.instance import evaluate_instances
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides

    seg = load_model(model)
    run = resolve_model(names_from)
    kind, names = unseen_images(run) if split == "holdout" else ("val", validation_names(run))
    if split == "holdout" and kind != "holdout":
        raise SystemExit(f"{names_from}: the run recorded no held-out images")
    items = items_named(items_from_config(apply_overrides(seg.config, [f"data.images={data}"]).data), names)
    if drop_groups:  # e.g. the groups a leave-groups-out run never saw, so every model scores the same images
        from biounet.data.dataset import read_groups

        groups = read_groups(ROOT / "configs/dsb2018-groups.csv")
        items = [it for it in items if groups.get(it.name) not in drop_groups]
    items = items[:limit] if limit else items
    out: dict = {"model": model, "images": len(items), "modes": {}}
    for mode in modes:
        s = seg.with_options(diameter="auto" if mode == "auto" else None)
        per_t = {}
        if mode == "oracle":
            from generalize import oracle_diameter
        native = {it.name: s.segment(it.load()[0], it.name) for it in items} if mode == "ceiling" else {}
        for t in transforms:
            preds, errors, seconds = [], [], 0.0
            for i, item in enumerate(items):
                image, truth = item.load()
                image, truth = transform(image, truth, t, seed=i)
                if mode == "ceiling":  # the native answer, resized as the truth is: no network pass here
                    preds.append((item.name, truth, ceiling_labels(native[item.name], t, truth.shape)))
                    continue
                if mode == "oracle":  # resized by the true median diameter: what a perfect estimate gives
                    s = seg.with_options(diameter=oracle_diameter(seg, truth))
                t0 = time.perf_counter()
                labels, size = s.segment_sized(image, item.name)
                seconds += time.perf_counter() - t0
                preds.append((item.name, truth, labels))
                if size is not None and size.diameter > 0 and truth.any():
                    errors.append(abs(np.log(size.diameter / true_diameter(truth))))
            summary, _ = evaluate_instances(preds)
            per_t[t] = {"dsb_score": round(summary["dsb_score"], 4), "ap50": round(summary["ap50"], 4),
                        "seconds_per_image": round(seconds / max(1, len(items)), 3),
                        **({"size_error": round(float(np.median(errors)), 4),
                            "size_within_20pct": round(float(np.mean(np.array(errors) <= np.log(1.2))), 3)}
                           if errors else {})}
            print(f"  {Path(model).name} {mode} {t}: {per_t[t]}", file=sys.stderr, flush=True)
        out["modes"][mode] = per_t
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="shipped model name or run folder (repeat); "
                    "default dsb2018-nuclei")
    ap.add_argument("--data", default=str(DSB_ZIP))
    ap.add_argument("--split", choices=("holdout", "val"), default="holdout")
    ap.add_argument("--names-from", default="", help="the run whose held-out/validation images are scored "
                    "(default: the first model's), so every model is scored on the same images")
    ap.add_argument("--transforms", default=",".join(DEFAULT))
    ap.add_argument("--modes", default="auto,none", help="size modes: auto, none, oracle "
                    "(each image resized by its true median nucleus diameter: the most an estimate can give), "
                    "ceiling (the native answer resized as the truth is: what the resize costs the metric)")
    ap.add_argument("--limit", type=int, default=0, help="the first N images only")
    ap.add_argument("--drop-groups", default="", help="leave out images of these groups (comma-separated, or "
                    "fold0 for benchmarks/generalize.py's FOLD0): the images a leave-groups-out run held out")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    models = args.model or ["dsb2018-nuclei"]
    transforms = [t for t in args.transforms.split(",") if t]
    for t in transforms:
        if t not in TRANSFORMS:
            ap.error(f"unknown transform {t!r} (known: {', '.join(TRANSFORMS)})")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("auto", "none", "oracle", "ceiling"):
            ap.error(f"unknown size mode {m!r} (known: auto, none, oracle, ceiling)")
    drop = tuple(g for g in args.drop_groups.split(",") if g)
    if drop == ("fold0",):
        from generalize import FOLD0

        drop = FOLD0
    results = [score_model(m, args.data, args.split, args.names_from or models[0], transforms, modes, args.limit, drop)
               for m in models]
    rows = []
    for r in results:
        for mode, per_t in r["modes"].items():
            rows.append([f"{Path(r['model']).name} ({mode})", *[per_t[t]["dsb_score"] for t in transforms]])
    print(f"DSB score on {results[0]['images']} {args.split} images, transformed\n")
    print(markdown_table(["model (--diameter)", *transforms], rows))
    sized = [(r, t) for r in results for t in transforms if "size_error" in r["modes"].get("auto", {}).get(t, {})]
    if sized:
        print("\nsize estimate, median |log(estimated / true diameter)| (share within 20 %):")
        for r, t in sized:
            e = r["modes"]["auto"][t]
            print(f"  {Path(r['model']).name} {t}: {e['size_error']:.3f} ({e['size_within_20pct']:.0%})")
    if args.json:
        payload = {**provenance(sys.argv, vars(args)), "transforms": transforms, "results": results}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
