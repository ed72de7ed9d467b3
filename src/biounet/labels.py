"""The label-image convention shared by targets, metrics and export.

A label image holds integer ids >= 0, 0 = background; bool masks count as
labels 0/1. One check, so every module rejects the same inputs the same way.
"""
from __future__ import annotations

import numpy as np


def check_labels(labels: np.ndarray, name: str = "labels", ndim: int | None = 2) -> np.ndarray:
    """Validate a label image and return it (bool as uint8, other dtypes kept).

    Raises ValueError for the wrong number of dimensions (when ``ndim`` is
    given), non-integer dtypes and negative ids.
    """
    labels = np.asarray(labels)
    if ndim is not None and labels.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}D label image, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer label image, got dtype {labels.dtype}")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError(f"{name}: label ids must be >= 0 (0 = background), found negative values "
                         f"(min {labels.min()})")
    return labels
