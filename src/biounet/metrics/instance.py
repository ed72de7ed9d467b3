"""Object-level scores for label images: IoU matching and the DSB 2018 score.

Modelled on StarDist's ``matching.py``: the overlap table of two label images
is computed once (one ``np.bincount`` over the pixels), turned into an IoU
matrix, and every count at a threshold comes back in one typed record,
:class:`Matching`.

Conventions
-----------
* Label 0 is background; any other non-negative integer is an object id. Ids
  need not be sequential (``{7, 1000}`` is fine) and only their identity
  matters, so permuting ids never changes a score.
* A predicted object matches a true one when their IoU is strictly greater
  than the threshold, one-to-one. For thresholds >= 0.5 such matches are
  unique by geometry; below 0.5 the largest possible number of matches is
  found with ``scipy.optimize.linear_sum_assignment`` (ties broken towards the
  higher total IoU).
* Empty images: any ratio whose denominator is zero is 1.0 when both images
  are empty (nothing to find, nothing claimed) and 0.0 otherwise. So the DSB
  score of two empty images is 1.0 and of one empty image 0.0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..labels import check_labels

# Thresholds of the Data Science Bowl 2018 metric: 0.50, 0.55, ..., 0.95.
# Rounded so that e.g. 0.65 is the literal 0.65, not 0.6500000000000001.
DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# Above this many lookup-table entries per pixel, sorting (np.unique) is cheaper.
_LUT_MAX_PER_PIXEL = 4


@dataclass(frozen=True)
class Matching:
    """Counts and scores of a one-to-one IoU matching at threshold ``thresh``.

    ``accuracy`` is TP / (TP + FP + FN), the per-threshold quantity that the
    DSB 2018 metric averages (and that StarDist also calls ``accuracy``).
    ``mean_matched_iou`` averages IoU over matched pairs; ``mean_true_iou``
    divides the same sum by the number of true objects (unmatched count as 0);
    ``panoptic_quality`` is sum(matched IoU) / (TP + FP/2 + FN/2).
    """

    thresh: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    mean_matched_iou: float
    mean_true_iou: float
    panoptic_quality: float
    n_true: int
    n_pred: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict, ready for JSON or a table row."""
        return dataclasses.asdict(self)


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"shape mismatch: truth has shape {truth.shape}, pred has shape {pred.shape}")
    return check_labels(truth, "truth", ndim=None), check_labels(pred, "pred", ndim=None)


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to 1..n (0 stays 0); return (flat int64 labels, original ids in order).

    A lookup table (O(pixels + max id)) beats sorting for the usual small ids;
    huge ids (hashes, uint64) fall back to ``np.unique``.
    """
    flat = labels.ravel()
    if flat.size == 0:
        return flat.astype(np.int64), np.zeros(0, dtype=labels.dtype)
    max_id = int(flat.max())
    if max_id <= _LUT_MAX_PER_PIXEL * flat.size + 1024:
        flat64 = flat.astype(np.int64, copy=False)
        present = np.bincount(flat64, minlength=max_id + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(max_id + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat64], ids.astype(labels.dtype)
    uniq, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.astype(np.int64).ravel()
    if uniq[0] != 0:  # no background: shift so ids start at 1
        return inverse + 1, uniq
    return inverse, uniq[1:]


def _overlap_table(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pixel counts (n_true + 1, n_pred + 1); row/column 0 is background."""
    t, t_ids = _sequential(truth)
    p, p_ids = _sequential(pred)
    n_t, n_p = t_ids.size + 1, p_ids.size + 1
    counts = np.bincount(t * n_p + p, minlength=n_t * n_p)
    return counts.reshape(n_t, n_p)


def _iou_from_table(table: np.ndarray) -> np.ndarray:
    inter = table[1:, 1:].astype(np.float64)
    area_t = table[1:, :].sum(axis=1, dtype=np.float64)
    area_p = table[:, 1:].sum(axis=0, dtype=np.float64)
    union = area_t[:, None] + area_p[None, :] - inter
    # Every listed object has area >= 1, so union >= 1: no division by zero.
    return inter / union


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every true object with every predicted one, shape (n_true, n_pred).

    Rows follow the sorted non-zero ids of ``truth`` (``np.unique(truth[truth > 0])``),
    columns those of ``pred``. Built from one contingency table, so the cost is
    one pass over the pixels plus n_true * n_pred for the output.
    """
    truth, pred = _check_pair(truth, pred)
    return _iou_from_table(_overlap_table(truth, pred))


def _check_thresh(thresh: float) -> float:
    thresh = float(thresh)
    if not 0.0 <= thresh <= 1.0:
        raise ValueError(f"IoU threshold must be in [0, 1], got {thresh}")
    return thresh


def _matched_ious(iou: np.ndarray, thresh: float) -> np.ndarray:
    """IoUs of the one-to-one matched pairs with IoU > thresh."""
    if iou.size == 0:
        return np.zeros(0)
    valid = iou > thresh
    if thresh >= 0.5:
        # IoU > 0.5 with two disjoint objects is impossible, so matches are unique.
        assert valid.sum(axis=0).max() <= 1 and valid.sum(axis=1).max() <= 1
        return iou[valid]
    from scipy.optimize import linear_sum_assignment

    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return np.zeros(0)
    sub = iou[np.ix_(rows, cols)]
    sub_valid = valid[np.ix_(rows, cols)]
    # Each match is worth 1; the IoU term (< 0.5 in total) only breaks ties,
    # so the number of matches is maximised first.
    k = min(sub.shape)
    cost = -(sub_valid + np.where(sub_valid, sub, 0.0) / (2 * k))
    r, c = linear_sum_assignment(cost)
    keep = sub_valid[r, c]
    return sub[r[keep], c[keep]]


def _matching_from_iou(iou: np.ndarray, thresh: float) -> Matching:
    n_true, n_pred = iou.shape
    matched = _matched_ious(iou, thresh)
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    iou_sum = float(matched.sum())
    both_empty = n_true == 0 and n_pred == 0

    def ratio(num: float, den: float) -> float:
        if den > 0:
            return num / den
        return 1.0 if both_empty else 0.0

    return Matching(
        thresh=thresh,
        tp=tp,
        fp=fp,
        fn=fn,
        precision=ratio(tp, tp + fp),
        recall=ratio(tp, tp + fn),
        f1=ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=ratio(tp, tp + fp + fn),
        mean_matched_iou=ratio(iou_sum, tp),
        mean_true_iou=ratio(iou_sum, n_true),
        panoptic_quality=ratio(iou_sum, tp + fp / 2 + fn / 2),
        n_true=int(n_true),
        n_pred=int(n_pred),
    )


def match_thresholds(
    truth: np.ndarray, pred: np.ndarray, thresholds: Iterable[float] = DSB_THRESHOLDS
) -> list[Matching]:
    """One :class:`Matching` per threshold, sharing a single IoU matrix."""
    iou = iou_matrix(truth, pred)
    return [_matching_from_iou(iou, _check_thresh(t)) for t in thresholds]


def match(truth: np.ndarray, pred: np.ndarray, thresh: float = 0.5) -> Matching:
    """Match predicted to true objects one-to-one where IoU > ``thresh``; see module notes."""
    return match_thresholds(truth, pred, (thresh,))[0]


def ap_at(truth: np.ndarray, pred: np.ndarray, thresh: float) -> float:
    """TP / (TP + FP + FN) at one IoU threshold (the DSB 2018 per-threshold "precision").

    Not the area under a precision-recall curve: it is the name the DSB 2018
    competition and StarDist use. Both empty -> 1.0, one empty -> 0.0.
    """
    return match(truth, pred, thresh).accuracy


def dsb_score(truth: np.ndarray, pred: np.ndarray) -> float:
    """Data Science Bowl 2018 score of one image: mean of TP/(TP+FP+FN) over IoU 0.50..0.95.

    Both images empty -> 1.0; exactly one empty -> 0.0. A dataset score is the
    mean of this over images (see :func:`evaluate_instances`).
    """
    return _dsb_from_matchings(match_thresholds(truth, pred, DSB_THRESHOLDS))


def _dsb_from_matchings(matchings: list[Matching]) -> float:
    return float(np.mean([m.accuracy for m in matchings]))


def evaluate_instances(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
) -> tuple[dict[str, float | int], list[dict[str, float | int | str]]]:
    """Score (name, truth_labels, pred_labels) triples; return (summary, per-image rows).

    Rows: name, dsb_score, ap50, ap75, n_true, n_pred, tp50, fp50, fn50.
    Summary: dsb_score, ap50 and ap75 are means over images (every image
    weighs the same, as in DSB 2018); tp50, fp50, fn50, n_true and n_pred are
    totals over images; n_images counts them. An empty iterable is an error.
    """
    rows: list[dict[str, float | int | str]] = []
    for name, truth, pred in pairs:
        ms = {m.thresh: m for m in match_thresholds(truth, pred, DSB_THRESHOLDS)}
        m50, m75 = ms[0.5], ms[0.75]
        rows.append(
            {
                "name": str(name),
                "dsb_score": _dsb_from_matchings(list(ms.values())),
                "ap50": m50.accuracy,
                "ap75": m75.accuracy,
                "n_true": m50.n_true,
                "n_pred": m50.n_pred,
                "tp50": m50.tp,
                "fp50": m50.fp,
                "fn50": m50.fn,
            }
        )
    if not rows:
        raise ValueError("evaluate_instances: no images to evaluate")
    summary: dict[str, float | int] = {
        "dsb_score": float(np.mean([r["dsb_score"] for r in rows])),
        "ap50": float(np.mean([r["ap50"] for r in rows])),
        "ap75": float(np.mean([r["ap75"] for r in rows])),
        "n_images": len(rows),
    }
    for key in ("tp50", "fp50", "fn50", "n_true", "n_pred"):
        summary[key] = int(sum(int(r[key]) for r in rows))
    return summary, rows
