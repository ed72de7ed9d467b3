"""A learned keep-or-split step per nucleus (the DSB 2018 winners' second stage), fitted on validation, scored on held-out.

    .venv/bin/python benchmarks/dsb_split.py                        # shipped model
    .venv/bin/python benchmarks/dsb_split.py --cache /tmp/split.npz --json out.json

The model's own post-processing gives the objects. For each object a more eager cut proposes a split
into two or more parts (seeds at every interior-probability peak that stands ``--alt-h`` above its
saddle, or, where that gives one part, at the h-maxima of the object's distance transform). A logistic
regression on a few per-object features (area, solidity, how deep the dip between the parts is, ...)
says whether to take the split. Its training labels are whether the split raises the image's DSB
score against the truth; it is fitted, and its decision threshold picked, on the run's validation
images only. The held-out images are then scored once with and without it, per modality; an
"oracle" row (split exactly where it helps, read from the truth) bounds what any such step can gain.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure, morphology, segmentation

FEATURES = ["log_area", "solidity", "eccentricity", "parts", "min_part_share", "dip", "saddle",
            "part_solidity_gain", "mean_interior", "mean_border", "from_shape", "colour"]


def cached_predictions(model: str, data: str, cache: Path | None) -> dict:
    """Network probabilities, truth and modality for the run's validation and held-out images."""
    if cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        out: dict = {"val": [], "held": []}
        for part in ("val", "held"):
            for i in range(int(z[f"{part}_n"])):
                out[part].append((str(z[f"{part}_{i}_name"]), z[f"{part}_{i}_p"], z[f"{part}_{i}_t"],
                                  str(z[f"{part}_{i}_kind"])))
        return out
    from _report import MODALITY_NAMES, held_out_split
    from biounet.data.dataset import items_named, modality

    sp = held_out_split(model, data)
    seg = sp.seg
    out = {"val": [], "held": []}
    for part, names in (("val", sp.validation), ("held", sp.held_out)):
        for item in items_named(sp.items, names):
            img, lab = item.load()
            p = seg.predict_prepared(seg.view(img, item.name)).astype(np.float32)
            out[part].append((item.name, p, lab.astype(np.int32), MODALITY_NAMES[modality(img)]))
    if cache:
        arrays = {}
        for part in ("val", "held"):
            arrays[f"{part}_n"] = np.array(len(out[part]))
            for i, (name, p, t, kind) in enumerate(out[part]):
                arrays.update({f"{part}_{i}_name": np.array(name), f"{part}_{i}_p": p, f"{part}_{i}_t": t,
                               f"{part}_{i}_kind": np.array(kind)})
        np.savez_compressed(cache, **arrays)
    return out


def eager_parts(obj: np.ndarray, interior: np.ndarray, alt_h: float, shape_h: float) -> tuple[np.ndarray, bool]:
    """Parts (labels 1..k inside ``obj``'s box) of one object under a more eager cut, and whether they came from its shape.

    First the interior-probability peaks that stand ``alt_h`` above their saddle; where that leaves one
    part, the h-maxima (``shape_h`` px) of the object's distance transform, as for elongated or
    dumbbell-shaped merges whose interior probability has no dip.
    """
    from biounet.postprocess import _h_peaks

    peaks = _h_peaks(np.where(obj, interior, 0.0), alt_h) & obj
    seeds = ndimage.label(peaks)[0]
    if seeds.max() >= 2:
        return segmentation.watershed(-interior, markers=seeds, mask=obj), False
    dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    seeds = ndimage.label(morphology.h_maxima(dist, shape_h) & obj)[0]
    if seeds.max() >= 2:
        return segmentation.watershed(-dist, markers=seeds, mask=obj), True
    return np.zeros_like(seeds), False


def _solidity(mask: np.ndarray) -> float:
    return float(measure.regionprops(mask.astype(np.uint8))[0].solidity)


def candidates(labels: np.ndarray, probs: np.ndarray, colour: bool, alt_h: float, shape_h: float,
               min_size: int) -> list[dict]:
    """Every object of ``labels`` that the eager cut splits into parts of at least ``min_size`` px, with its features."""
    interior = probs[1].astype(np.float32)
    border = probs[2].astype(np.float32)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        obj = labels[sl] == k
        parts, from_shape = eager_parts(obj, interior[sl], alt_h, shape_h)
        sizes = np.bincount(parts.ravel())[1:]
        if len(sizes) < 2 or (sizes < min_size).any():
            continue
        inner = interior[sl]
        # the saddle: the highest interior probability where two parts touch
        grown = ndimage.grey_dilation(parts, size=3)
        cut = (parts > 0) & (grown != parts) & (grown > 0)
        saddle = float(inner[cut].max()) if cut.any() else 0.0
        peaks = ndimage.maximum(inner, parts, index=np.arange(1, len(sizes) + 1))
        props = measure.regionprops(obj.astype(np.uint8))[0]
        part_sol = np.mean([_solidity(parts == j) for j in range(1, len(sizes) + 1)])
        out.append({"slice": sl, "id": k, "parts": parts, "features": [
            np.log(obj.sum()), props.solidity, props.eccentricity, len(sizes), sizes.min() / sizes.sum(),
            float(np.min(peaks)) - saddle, saddle, part_sol - props.solidity,
            float(inner[obj].mean()), float(border[sl][obj].mean()), float(from_shape), float(colour)]})
    return out


def apply_splits(labels: np.ndarray, chosen: list[dict]) -> np.ndarray:
    out = labels.copy()
    nxt = int(labels.max()) + 1
    for c in chosen:
        view = out[c["slice"]]
        for j in range(2, int(c["parts"].max()) + 1):
            view[c["parts"] == j] = nxt
            nxt += 1
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Weighted L2 logistic regression by Newton's method; returns (bias, coefficients...) on standardised x."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    beta = np.zeros(xb.shape[1])
    reg = l2 * np.eye(len(beta))
    reg[0, 0] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-xb @ beta))
        grad = xb.T @ (w * (p - y)) + reg @ beta
        hess = (xb * (w * p * (1 - p))[:, None]).T @ xb + reg
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def main() -> None:
    from _report import split_parser

    ap = split_parser(__doc__)
    ap.add_argument("--cache", type=Path, help="npz of the network's probabilities (written once, then read)")
    ap.add_argument("--alt-h", type=float, default=0.1, help="eager cut: interior peaks standing this much above their saddle")
    ap.add_argument("--shape-h", type=float, default=2.0, help="eager cut fallback: distance-transform h-maxima, px")
    args = ap.parse_args()

    from _report import markdown_table, modality_means
    from biounet.metrics.instance import dsb_score, evaluate_instances
    from biounet.predict import load_model
    from biounet.postprocess import segment

    post = load_model(args.model).post
    t0 = time.perf_counter()
    data = cached_predictions(args.model, args.data, args.cache)
    print(f"network on {len(data['val'])} validation + {len(data['held'])} held-out images: "
          f"{time.perf_counter() - t0:.0f} s")

    def gather(part: str) -> list[tuple]:
        rows = []
        for name, p, truth, kind in data[part]:
            p = p.astype(np.float32)
            labels = segment(p, post)
            cands = candidates(labels, p, kind.startswith("colour"), args.alt_h, args.shape_h, post.min_size)
            base = dsb_score(truth, labels)
            gains = [dsb_score(truth, apply_splits(labels, [c])) - base for c in cands]
            rows.append((name, kind, truth, labels, cands, np.array(gains)))
        return rows

    t0 = time.perf_counter()
    val, held = gather("val"), gather("held")
    print(f"candidates: {sum(len(r[4]) for r in val)} on validation, {sum(len(r[4]) for r in held)} held-out "
          f"({time.perf_counter() - t0:.0f} s)")

    if not any(r[4] for r in val):
        raise SystemExit(f"{args.model}: no object on the validation images has a split to propose; nothing to fit")
    x = np.array([c["features"] for r in val for c in r[4]], dtype=np.float64)
    g = np.concatenate([r[5] for r in val])
    mu, sd = x.mean(0), x.std(0) + 1e-9
    y = (g > 0).astype(np.float64)
    beta = fit_logistic((x - mu) / sd, y, np.maximum(np.abs(g), 1e-3) / np.abs(g).mean())

    def prob(rows):
        for r in rows:
            if r[4]:
                xs = (np.array([c["features"] for c in r[4]]) - mu) / sd
                yield 1 / (1 + np.exp(-(beta[0] + xs @ beta[1:])))
            else:
                yield np.zeros(0)

    def score(rows, decide) -> tuple[dict, dict]:
        triples, kinds = [], {}
        for r, pr in zip(rows, prob(rows)):
            keep = decide(r, pr)
            lab = apply_splits(r[3], [c for c, k in zip(r[4], keep) if k])
            triples.append((r[0], r[2], lab))
            kinds[r[0]] = r[1]
        summary, per = evaluate_instances(triples)
        return summary, modality_means(per, kinds)

    # decision threshold picked on validation
    levels = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    val_scores = {t: score(val, lambda r, pr, t=t: pr > t)[0]["dsb_score"] for t in levels}
    best = max(val_scores, key=val_scores.get)
    print("validation DSB by decision threshold:", {t: round(s, 4) for t, s in val_scores.items()})
    print("coefficients:", dict(zip(["bias"] + FEATURES, np.round(beta, 3))))
    results = {}
    for label, decide in (("model's post-processing", lambda r, pr: np.zeros(len(pr), bool)),
                          (f"learned split (p > {best})", lambda r, pr: pr > best),
                          ("every eager split", lambda r, pr: np.ones(len(pr), bool)),
                          ("oracle (truth decides; a bound)", lambda r, pr: r[5] > 0)):
        results[label] = {"validation": score(val, decide)[0]["dsb_score"], "holdout": score(held, decide)}
    kinds = sorted(results["model's post-processing"]["holdout"][1])
    print(markdown_table(["objects", "validation DSB", "held-out DSB", "AP@0.5", "AP@0.75", "predicted"] + kinds,
                         [[k, v["validation"], v["holdout"][0]["dsb_score"], v["holdout"][0]["ap50"],
                           v["holdout"][0]["ap75"], v["holdout"][0]["n_pred"]] + [v["holdout"][1][m] for m in kinds]
                          for k, v in results.items()]))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "alt_h": args.alt_h, "shape_h": args.shape_h,
                                         "threshold": best, "validation_by_threshold": val_scores,
                                         "coefficients": dict(zip(["bias"] + FEATURES, beta.tolist())),
                                         "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
