"""Pixel-level scores for binary masks: Dice, IoU (Jaccard) and pixel error.

All functions take two masks of the same shape (any number of dimensions),
either ``bool`` or numeric with only the values 0 and 1. Anything else (255
masks, probabilities) is rejected rather than silently thresholded: pass
``mask > 0`` or ``prob > t`` explicitly.

Empty masks: when neither mask has a foreground pixel there is nothing to get
wrong, so Dice and IoU are 1.0; when exactly one is empty they are 0.0.
Scores are for one pair of masks; average per image yourself if you want a
per-image mean, or pass a stacked array for a pooled (pixel-weighted) score.
"""
from __future__ import annotations

import numpy as np


def _as_mask(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as bool, refusing values other than 0/1 (likely a unit mistake)."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: expected a binary mask, got dtype {arr.dtype}")
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"{name}: expected a binary mask (bool or 0/1), got values in "
            f"[{arr.min()}, {arr.max()}]; threshold it first (e.g. mask > 0)"
        )
    return arr.astype(bool)


def _mask_pair(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"shape mismatch: truth has shape {truth.shape}, pred has shape {pred.shape}")
    return _as_mask(truth, "truth"), _as_mask(pred, "pred")


def _counts(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Return (intersection, truth area, pred area) as Python ints."""
    t, p = _mask_pair(truth, pred)
    inter = int(np.count_nonzero(t & p))
    return inter, int(np.count_nonzero(t)), int(np.count_nonzero(p))


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient 2|T∩P| / (|T| + |P|); 1.0 when both masks are empty."""
    inter, nt, np_ = _counts(truth, pred)
    denom = nt + np_
    return 1.0 if denom == 0 else 2.0 * inter / denom


def iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union |T∩P| / |T∪P| (Jaccard); 1.0 when both masks are empty."""
    inter, nt, np_ = _counts(truth, pred)
    union = nt + np_ - inter
    return 1.0 if union == 0 else inter / union


def pixel_error(truth: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of pixels whose class differs (the ISBI 2012 pixel error); 0.0 for size-0 input."""
    t, p = _mask_pair(truth, pred)
    if t.size == 0:
        return 0.0
    return int(np.count_nonzero(t != p)) / t.size
