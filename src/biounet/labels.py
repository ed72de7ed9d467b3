"""The label-image convention shared by targets, metrics and export, and the run-length codes of labels.

A label image holds integer ids >= 0, 0 = background; bool masks count as
labels 0/1. One check, so every module rejects the same inputs the same way.

Kaggle's RLE (DSB 2018 submissions, :func:`biounet.data.dsb.write_submission`)
numbers pixels from 1, top to bottom then left to right (column-major, Fortran
order), and writes each object as ``"start length start length ..."``.
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


# ---- run-length codes: pixels numbered column by column (Fortran order), as Kaggle and COCO do ----
def index_runs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the runs of consecutive values in ascending flat pixel indices ``idx``:
    the one run-length encoder, behind Kaggle's RLE here and COCO's (:mod:`biounet.data.coco`)."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        return idx[:0], idx[:0]
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([idx[:1], idx[breaks]])
    ends = np.concatenate([idx[breaks - 1], idx[-1:]]) + 1
    return starts, ends - starts


def mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the object runs of a (H, W) mask (nonzero = object), starts counted from 0
    column by column."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    return index_runs(np.flatnonzero(mask.astype(bool).ravel(order="F")))


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle RLE of a (H, W) mask (nonzero = object): ``"start length start length ..."``, starts
    counted from 1; ``""`` for an empty mask."""
    return _runs_to_string(*mask_runs(mask))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: a (H, W) bool mask.

    Raises ``ValueError`` for anything Kaggle's scorer would reject: an odd
    number of values, non-integers, starts below 1 or lengths below 1, runs
    past the last pixel, and runs out of order or overlapping.
    """
    h, w = (int(v) for v in shape)
    runs = parse_rle(rle)
    mask = np.zeros(h * w, dtype=bool)
    if runs.size:
        starts, lengths = runs[:, 0] - 1, runs[:, 1]
        ends = starts + lengths
        if ends[-1] > h * w:
            raise ValueError(f"RLE run ends at pixel {ends[-1]}, past the {h}x{w} image ({h * w} pixels)")
        # np.repeat + arange builds every covered index without a Python loop.
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask[np.repeat(starts, lengths) + offsets] = True
    return mask.reshape((h, w), order="F")


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One Kaggle RLE per object of a (H, W) label image (0 = background).

    Objects come in increasing label order; label values absent from the
    image produce no string. Objects cannot overlap because each pixel holds
    one label, which Kaggle requires.
    """
    labels = check_labels(labels)
    flat = labels.ravel(order="F")
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return []
    values = flat[idx]
    if values.min() < 0:
        raise ValueError("labels must be non-negative")
    # A stable sort by label keeps each object's pixel indices ascending, so
    # all objects are encoded in one pass over the image, not one pass each.
    order = np.argsort(values, kind="stable")
    values, idx = values[order], idx[order]
    splits = np.flatnonzero(np.diff(values)) + 1
    return [_runs_to_string(*index_runs(group)) for group in np.split(idx, splits)]


def _runs_to_string(starts: np.ndarray, lengths: np.ndarray) -> str:
    """'start length ...' with 1-based starts, from 0-based ones."""
    pairs = np.stack([starts + 1, lengths], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def parse_rle(rle: str) -> np.ndarray:
    """(N, 2) int64 array of (start, length) pairs, validated but not bounded by an image."""
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)})")
    bad = next((t for t in tokens if not (t.isascii() and t.isdigit())), None)
    if bad is not None:
        raise ValueError(f"RLE value {bad!r} is not a non-negative integer")
    runs = np.array([int(t) for t in tokens], dtype=np.int64).reshape(-1, 2)
    if runs.size == 0:
        return runs
    if (runs[:, 0] < 1).any():
        raise ValueError("RLE starts are 1-based; found a start below 1")
    if (runs[:, 1] < 1).any():
        raise ValueError("RLE lengths must be at least 1")
    ends = runs[:, 0] + runs[:, 1]
    if (runs[1:, 0] < ends[:-1]).any():
        raise ValueError("RLE runs must be sorted and must not overlap")
    return runs
