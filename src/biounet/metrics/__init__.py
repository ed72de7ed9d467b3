"""Evaluation metrics: pixel (semantic), object (instance) and EM segmentation scores.

Pure functions on numpy arrays; nothing here reads files or needs the model.
"""
from .em import RandInfo, cells_from_membrane_mask, em_scores, evaluate_cells, evaluate_membranes, v_info, v_rand
from .instance import (
    DSB_THRESHOLDS,
    Matching,
    ap_at,
    dsb_score,
    evaluate_instances,
    iou_matrix,
    match,
    match_thresholds,
)
from .semantic import dice, iou, pixel_error

__all__ = [
    "DSB_THRESHOLDS",
    "Matching",
    "RandInfo",
    "ap_at",
    "cells_from_membrane_mask",
    "dice",
    "dsb_score",
    "em_scores",
    "evaluate_instances",
    "evaluate_membranes",
    "evaluate_cells",
    "iou",
    "iou_matrix",
    "match",
    "match_thresholds",
    "pixel_error",
    "v_info",
    "v_rand",
]
