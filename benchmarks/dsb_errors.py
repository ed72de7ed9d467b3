"""Where the DSB score goes: merges, splits, misses, false positives and size bias, per modality.

    .venv/bin/python benchmarks/dsb_errors.py                       # the shipped model, its held-out images
    .venv/bin/python benchmarks/dsb_errors.py --model runs/nuclei --sheet errors.png --worst 8

Each true nucleus is matched one-to-one at IoU > 0.5 (as the DSB score's first threshold) and
every one left unmatched is put in one class, in this order:

* merged: the predicted object covering most of it covers most of another true nucleus too;
* split: two or more predicted objects each cover at least 20 % of it;
* missed: predicted objects cover less than 20 % of it. With the network's foreground probability
  a miss is also put down to the network ("unseen": no pixel of it above the foreground threshold;
  "faint": some, but less than half of its pixels) or to post-processing ("dropped": at least half of
  it above the threshold, but its object fell below min_size or min_score, or went to a neighbour).
  A single pixel above the threshold is not enough to blame post-processing: with that rule (this
  script up to commit 4c92a8a) 88 of the shipped model's 147 held-out misses were "dropped", with this one 25 are;
* poor outline: the rest (one object overlaps it, but with IoU <= 0.5).

Unmatched predicted objects that lie mostly (> 80 %) on true background are false positives. For
matched pairs the size bias is the median of (predicted area - true area) / true area: negative means
outlines drawn inside the annotation. The sheet shows the worst images, truth outlines (green) beside
prediction outlines (magenta).
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COVER = 0.2  # a predicted object "covers" a nucleus when it holds this share of its pixels


def classify(truth: np.ndarray, pred: np.ndarray, foreground: np.ndarray | None = None,
             threshold: float = 0.5) -> tuple[Counter, list[float]]:
    """Error counts and matched-pair relative size errors for one image.

    ``foreground`` (the network's foreground probability, same shape) splits the misses into
    "missed unseen" (no pixel above ``threshold``), "missed faint" (fewer than half of its pixels)
    and "missed dropped" (the rest: the network saw it, post-processing lost it).
    """
    from biounet.metrics.instance import match

    m = match(truth, pred, 0.5)
    t_ids, t_area = np.unique(truth[truth > 0], return_counts=True)
    p_ids, p_area = np.unique(pred[pred > 0], return_counts=True)
    t_index = {int(t): i for i, t in enumerate(t_ids)}
    p_index = {int(p): i for i, p in enumerate(p_ids)}
    both = (truth > 0) & (pred > 0)
    pairs, overlap = np.unique(np.stack([truth[both], pred[both]]), axis=1, return_counts=True)
    table = np.zeros((len(t_ids), len(p_ids)))
    for (t, p), n in zip(pairs.T, overlap):
        table[t_index[int(t)], p_index[int(p)]] = n
    iou = table / (t_area[:, None] + p_area[None, :] - table) if table.size else table
    matched_t = set()
    matched_p = set()
    sizes = []
    # one-to-one matches at IoU > 0.5 are unique (two objects cannot both exceed 0.5 with one nucleus)
    for i, j in zip(*np.nonzero(iou > 0.5)):
        matched_t.add(i)
        matched_p.add(j)
        sizes.append((p_area[j] - t_area[i]) / t_area[i])
    counts = Counter(tp=m.tp, fp=0, n_true=len(t_ids), n_pred=len(p_ids))
    for i in range(len(t_ids)):
        if i in matched_t:
            continue
        share = table[i] / t_area[i]  # of this nucleus, held by each predicted object
        j = int(np.argmax(share)) if share.size else -1
        others = table[:, j] / t_area if j >= 0 else np.zeros(0)
        if j >= 0 and share[j] >= COVER and (np.delete(others, i) > 0.5).any():
            counts["merged"] += 1
        elif (share >= COVER).sum() >= 2:
            counts["split"] += 1
        elif share.size == 0 or share.max() < COVER:
            counts["missed"] += 1
            if foreground is not None:
                seen = (foreground[truth == t_ids[i]] > threshold).mean()
                counts["missed dropped" if seen >= 0.5 else "missed faint" if seen > 0 else "missed unseen"] += 1
        else:
            counts["poor outline"] += 1
    for j in range(len(p_ids)):
        if j not in matched_p and table[:, j].sum() / p_area[j] < 0.2:
            counts["fp"] += 1
    return counts, sizes


def outline(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def sheet(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]], path: Path) -> None:
    """Worst images: truth outlines beside prediction outlines, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from biounet.overlay import to_display_rgb

    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 4 * len(rows)), squeeze=False)
    for (name, img, truth, pred, score), (a, b) in zip(rows, axes):
        base = to_display_rgb(img)
        for ax, lab, colour, title in ((a, truth, (0, 255, 0), "truth"), (b, pred, (255, 0, 255), "prediction")):
            shown = base.copy()
            shown[outline(lab)] = colour
            ax.imshow(shown)
            ax.set_title(f"{name[:12]} {title} ({int(lab.max())} objects)" + (f", DSB {score:.2f}" if ax is b else ""),
                         fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dsb2018-nuclei")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/dsb2018/stage1_train.zip"))
    ap.add_argument("--sheet", type=Path, default=Path("dsb_errors.png"), help="overlay sheet of the worst images")
    ap.add_argument("--worst", type=int, default=6)
    args = ap.parse_args()

    from _report import MODALITY_NAMES, markdown_table
    from biounet.checkpoint import resolve_model, unseen_images
    from biounet.data.dataset import items_from_config, items_named, modality
    from biounet.data.dsb import load_dsb_pair
    from biounet.metrics.instance import dsb_score
    from biounet.postprocess import foreground_prob
    from biounet.predict import load_model
    from biounet.tasks import apply_overrides

    seg = load_model(args.model)
    data = apply_overrides(seg.config, [f"data.images={args.data}"]).data
    # the held-out images when the run has them (as benchmarks/dsb2018.py scores), else the validation ones
    which, names = unseen_images(resolve_model(args.model))
    val = items_named(items_from_config(data), names)
    by_kind: dict[str, Counter] = {}
    sizes: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {}
    images = []
    misses: Counter = Counter()
    for item in val:
        img, truth = load_dsb_pair(item.extra)
        probs = seg.predict_prepared(seg.view(img, item.name))
        pred = seg.segment_probs(probs)
        kind = MODALITY_NAMES[modality(img)]
        counts, rel = classify(truth, pred, foreground_prob(probs), seg.post.threshold)
        misses[item.name[:12]] = counts["missed"]
        by_kind.setdefault(kind, Counter()).update(counts)
        sizes.setdefault(kind, []).extend(rel)
        score = dsb_score(truth, pred)
        scores.setdefault(kind, []).append(score)
        images.append((score, item.name, img, truth, pred))

    keys = ["n_true", "tp", "merged", "split", "missed", "poor outline", "n_pred", "fp"]
    table = []
    for kind in sorted(by_kind):
        c = by_kind[kind]
        table.append([f"{kind} ({len(scores[kind])})", float(np.mean(scores[kind]))] + [int(c[k]) for k in keys]
                     + [float(np.median(sizes[kind])) if sizes[kind] else float("nan")])
    total = sum(by_kind.values(), Counter())
    table.append([f"all ({len(val)})", float(np.mean([s for v in scores.values() for s in v]))]
                 + [int(total[k]) for k in keys] + [float(np.median([s for v in sizes.values() for s in v]))])
    which = "held-out" if which == "holdout" else "validation"
    print(f"{seg.name}: errors at IoU 0.5 on {len(val)} {which} images (true nuclei left unmatched, by cause)\n")
    print(markdown_table(["modality", "DSB", "true", "matched", "merged", "split", "missed", "poor outline",
                          "predicted", "false pos.", "median size error"], table))
    print(f"\nmissed nuclei: {total['missed unseen']} unseen by the network (foreground probability never above "
          f"{seg.post.threshold}), {total['missed faint']} faint (less than half of the nucleus above it), "
          f"{total['missed dropped']} seen but dropped by post-processing (min_size "
          f"{seg.post.min_size}, min_score {seg.post.min_score}, or taken by a neighbour); most in: "
          + ", ".join(f"{name} {n}" for name, n in misses.most_common(3)))
    images.sort(key=lambda r: r[0])
    print("\nworst images: " + ", ".join(f"{name[:12]} {score:.3f}" for score, name, *_ in images[: args.worst]))
    sheet([(name, img, truth, pred, score) for score, name, img, truth, pred in images[: args.worst]], args.sheet)
    print(f"overlay sheet of the {args.worst} worst: {args.sheet}")


if __name__ == "__main__":
    main()
