"""ISBI 2012 segmentation scores: foreground-restricted Rand and information F-scores.

Definitions follow Arganda-Carreras et al. 2015, "Crowdsourcing the creation
of image segmentation algorithms for connectomics" (Front. Neuroanat. 9:142),
with S the predicted and T the true segmentation. Let p_ij be the fraction of
scored pixels in predicted segment i and true segment j, s_i = sum_j p_ij and
t_j = sum_i p_ij. Only pixels with a non-zero truth label are scored
("foreground-restricted": the truth membrane, label 0, is ignored).

* Rand split = sum p_ij^2 / sum t_j^2: probability that two pixels of the same
  true segment share a predicted segment. Splitting a true cell lowers it.
* Rand merge = sum p_ij^2 / sum s_i^2: probability that two pixels of the same
  predicted segment share a true segment. Merging true cells lowers it.
* Info split = I(S;T) / H(S), info merge = I(S;T) / H(T).
* V_rand and V_info are the harmonic means (F-scores, alpha = 0.5) of the two
  parts; 1.0 is perfect.

This is the N^2 normalisation of Fiji's ``RandError.foregroundRestrictedStatsN2``:
squared probabilities including self-pairs. ``skimage.metrics.adapted_rand_error``
counts pairs instead (subtracting n), so it differs by O(1/segment size); its
``precision`` is our split part and its ``recall`` our merge part.

Predicted label 0 inside the truth foreground means "unassigned": each such
pixel counts as its own singleton segment (as in Fiji). An entropy of zero
(a single segment) makes the matching info part 1.0, since nothing can be
split (or merged) there. A slice with no truth foreground scores 1.0 everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .semantic import _as_mask, dice, iou, pixel_error


@dataclass(frozen=True)
class RandInfo:
    """Foreground-restricted Rand and information F-scores with their split/merge parts."""

    v_rand: float
    v_rand_split: float
    v_rand_merge: float
    v_info: float
    v_info_split: float
    v_info_merge: float


def _check_segs(truth_seg: np.ndarray, pred_seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth_seg = np.asarray(truth_seg)
    pred_seg = np.asarray(pred_seg)
    if truth_seg.shape != pred_seg.shape:
        raise ValueError(
            f"shape mismatch: truth has shape {truth_seg.shape}, pred has shape {pred_seg.shape}"
        )
    for name, arr in (("truth_seg", truth_seg), ("pred_seg", pred_seg)):
        if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name}: expected an integer label image, got dtype {arr.dtype}")
    return truth_seg, pred_seg


def _fscore(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def _contingency(truth_seg: np.ndarray, pred_seg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero joint counts, truth marginal counts, pred marginal counts over truth != 0."""
    fg = truth_seg != 0
    t = truth_seg[fg]
    p = pred_seg[fg].astype(np.int64)
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    t_idx = t_idx.ravel().astype(np.int64)
    p_idx = p_idx.ravel().astype(np.int64)
    unassigned = p == 0
    if unassigned.any():
        # Each unassigned pixel becomes a fresh singleton segment.
        p_idx[unassigned] = p_idx.max() + 1 + np.arange(int(unassigned.sum()))
    n_p = int(p_idx.max()) + 1 if p_idx.size else 0
    _, joint = np.unique(t_idx * n_p + p_idx, return_counts=True)
    return joint, np.bincount(t_idx), np.bincount(p_idx)


def em_scores(truth_seg: np.ndarray, pred_seg: np.ndarray) -> RandInfo:
    """Foreground-restricted V_rand and V_info of two label images (any shape); see module notes.

    ``truth_seg``: 0 = ignored (membrane), other ids = true segments.
    ``pred_seg``: ids of predicted segments; 0 = unassigned singleton pixels.
    """
    truth_seg, pred_seg = _check_segs(truth_seg, pred_seg)
    joint, t_counts, s_counts = _contingency(truth_seg, pred_seg)
    n = float(t_counts.sum())
    if n == 0:
        return RandInfo(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    p_ij, t_j, s_i = joint / n, t_counts / n, s_counts / n

    sum_p2 = float(np.sum(p_ij**2))
    rand_split = sum_p2 / float(np.sum(t_j**2))
    rand_merge = sum_p2 / float(np.sum(s_i**2))

    h_t, h_s, h_ts = _entropy(t_j), _entropy(s_i), _entropy(p_ij)
    # Clip float noise: 0 <= I <= min(H(S), H(T)).
    mutual = min(max(h_t + h_s - h_ts, 0.0), h_t, h_s)
    info_split = 1.0 if h_s == 0 else mutual / h_s
    info_merge = 1.0 if h_t == 0 else mutual / h_t

    return RandInfo(
        v_rand=_fscore(rand_split, rand_merge),
        v_rand_split=rand_split,
        v_rand_merge=rand_merge,
        v_info=_fscore(info_split, info_merge),
        v_info_split=info_split,
        v_info_merge=info_merge,
    )


def v_rand(truth_seg: np.ndarray, pred_seg: np.ndarray) -> float:
    """Foreground-restricted Rand F-score (ISBI 2012 V_rand); 1.0 is perfect."""
    return em_scores(truth_seg, pred_seg).v_rand


def v_info(truth_seg: np.ndarray, pred_seg: np.ndarray) -> float:
    """Foreground-restricted information-theoretic F-score (ISBI 2012 V_info); 1.0 is perfect."""
    return em_scores(truth_seg, pred_seg).v_info


def _components(cell_mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(cell_mask, connectivity=1).astype(np.int32, copy=False)


def cells_from_membrane_mask(cell_mask: np.ndarray) -> np.ndarray:
    """Label the cells of one (H, W) slice and grow them over the membrane: (H, W) int32.

    Cells are the 4-connected components of ``cell_mask`` (True = cell, i.e.
    not membrane). Every membrane pixel then takes the label of its nearest
    cell (``skimage.segmentation.expand_labels``), so boundaries have zero
    width. This is the "thinned" evaluation of the ISBI 2012 leaderboard: a
    prediction is not penalised for drawing membranes thicker or thinner than
    the annotators, only for where segments split or merge. A slice without any
    cell pixel stays all 0 (every pixel unassigned).
    """
    cell_mask = _as_mask(cell_mask, "cell_mask")
    if cell_mask.ndim != 2:
        # 3D components would join cells across slices; ISBI scores slice by slice.
        raise ValueError(f"cell_mask: expected one (H, W) slice, got shape {cell_mask.shape}")
    from skimage.segmentation import expand_labels

    labels = _components(cell_mask)
    if labels.max() == 0:
        return labels
    # Any distance beyond the image diagonal reaches every pixel.
    return expand_labels(labels, distance=float(sum(cell_mask.shape))).astype(np.int32, copy=False)


def evaluate_membranes(truth_cells: np.ndarray, pred_cells: np.ndarray) -> dict[str, float | int]:
    """ISBI 2012 scores of predicted cell masks against true ones, (N, H, W) or (H, W) bool.

    True = cell, False = membrane. Pixel scores: ``pixel_error`` and, on the
    membrane class (what the network predicts), ``membrane_dice`` and
    ``membrane_iou``. Segmentation scores: truth segments are the 4-connected
    cell components (truth membrane ignored), predicted segments come from
    :func:`cells_from_membrane_mask` (thinned evaluation). Every score is the
    mean over slices; ``n_slices`` says how many.
    """
    truth_cells = _as_mask(truth_cells, "truth_cells")
    pred_cells = _as_mask(pred_cells, "pred_cells")
    if truth_cells.shape != pred_cells.shape:
        raise ValueError(
            f"shape mismatch: truth has shape {truth_cells.shape}, pred has shape {pred_cells.shape}"
        )
    if truth_cells.ndim == 2:
        truth_cells, pred_cells = truth_cells[None], pred_cells[None]
    if truth_cells.ndim != 3 or truth_cells.shape[0] == 0:
        raise ValueError(f"expected (N, H, W) or (H, W) masks with N >= 1, got shape {truth_cells.shape}")

    per_slice: dict[str, list[float]] = {
        key: []
        for key in (
            "pixel_error",
            "membrane_dice",
            "membrane_iou",
            "v_rand",
            "v_rand_split",
            "v_rand_merge",
            "v_info",
            "v_info_split",
            "v_info_merge",
        )
    }
    for t, p in zip(truth_cells, pred_cells):
        scores = em_scores(_components(t), cells_from_membrane_mask(p))
        per_slice["pixel_error"].append(pixel_error(t, p))
        per_slice["membrane_dice"].append(dice(~t, ~p))
        per_slice["membrane_iou"].append(iou(~t, ~p))
        for key in ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge"):
            per_slice[key].append(getattr(scores, key))
    result: dict[str, float | int] = {key: float(np.mean(vals)) for key, vals in per_slice.items()}
    result["n_slices"] = int(truth_cells.shape[0])
    return result


def evaluate_cells(truth_cells: np.ndarray, pred_labels: np.ndarray) -> dict[str, float | int]:
    """ISBI 2012 scores of predicted cell *labels*, un-thinned: (N, H, W) or (H, W).

    ``truth_cells`` as in :func:`evaluate_membranes` (True = cell); truth
    segments are its 4-connected components. ``pred_labels`` are scored as
    they are: no growing over boundaries, and any 0 pixel inside a true cell is
    an unassigned singleton (a drawn membrane costs split score). Every score
    is the mean over slices; ``n_slices`` says how many.
    """
    truth_cells = _as_mask(truth_cells, "truth_cells")
    pred_labels = np.asarray(pred_labels)
    if truth_cells.shape != pred_labels.shape:
        raise ValueError(f"shape mismatch: truth has shape {truth_cells.shape}, pred has shape {pred_labels.shape}")
    if truth_cells.ndim == 2:
        truth_cells, pred_labels = truth_cells[None], pred_labels[None]
    keys = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")
    per_slice: dict[str, list[float]] = {k: [] for k in keys}
    for t, p in zip(truth_cells, pred_labels):
        scores = em_scores(_components(t), p)
        for k in keys:
            per_slice[k].append(getattr(scores, k))
    result: dict[str, float | int] = {k: float(np.mean(v)) for k, v in per_slice.items()}
    result["n_slices"] = int(truth_cells.shape[0])
    return result
