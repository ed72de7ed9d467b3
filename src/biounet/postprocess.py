"""Probabilities -> binary masks or instance labels, and threshold tuning.

Two instance routes, picked by what the network predicts:

* 3-class softmax ``[background, interior, border]`` (``data.target = "border3"``,
  ``"contour3"``, ``"depth3"``; ``"contour4"`` adds a fourth class, the contact between nuclei):
  seeds are confident interior pixels, which the border class has already cut
  apart between touching nuclei (and, with ``seed_h``, the separate peaks of the
  interior probability); a watershed grows them back over the foreground.
* 1-channel foreground probability: touching blobs are split by a watershed on
  the distance transform, seeded at its h-maxima.

Both end the same way: fill holes, drop objects below ``min_size``, relabel
``1..n``. Label images are ``int32`` (0 = background). Foreground components
that get no seed still become objects, so no nucleus is silently lost.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage import measure, morphology, segmentation

from .config import PostConfig

__all__ = [
    "threshold_mask",
    "connected_components",
    "remove_small",
    "fill_holes",
    "relabel_sequential",
    "instances_from_border_probs",
    "instances_from_prob",
    "tune_thresholds",
    "segment",
    "label_blockwise",
    "blockwise_layout",
    "keep_anchored",
    "paste_labels",
]

PostFn = Callable[[NDArray, PostConfig], NDArray]
ScoreFn = Callable[[NDArray, NDArray], float]


def threshold_mask(prob: NDArray, threshold: float) -> NDArray[np.bool_]:
    """``prob > threshold`` (strict, so ``threshold=0.5`` leaves a 0.5 tie out)."""
    return np.asarray(prob) > threshold


def connected_components(mask: NDArray, connectivity: int = 2) -> NDArray[np.int32]:
    """Label the connected components of a 2D mask as ``1..n``.

    ``connectivity=2`` (8-neighbourhood, scikit-image's default) keeps thin
    diagonal structures in one piece; use 1 for the 4-neighbourhood.
    """
    return measure.label(np.asarray(mask) != 0, connectivity=connectivity).astype(np.int32, copy=False)


def remove_small(labels: NDArray, min_size: int) -> NDArray[np.int32]:
    """Set objects with fewer than ``min_size`` pixels to 0; ids are not renumbered."""
    lab = np.asarray(labels).astype(np.int32, copy=True)
    if min_size <= 1 or not lab.any():
        return lab
    sizes = np.bincount(lab.ravel())
    small = sizes < min_size
    small[0] = False
    lab[small[lab]] = 0
    return lab


def fill_holes(labels: NDArray) -> NDArray[np.int32]:
    """Fill the holes of each object with its own id.

    Only background pixels are filled, so an object nested in another's hole
    is kept. Works per object on its bounding box, which holds every hole.
    """
    lab = np.asarray(labels).astype(np.int32, copy=True)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        crop = lab[sl]
        obj = crop == k
        holes = ndimage.binary_fill_holes(obj) & ~obj & (crop == 0)
        crop[holes] = k
    return lab


def relabel_sequential(labels: NDArray) -> NDArray[np.int32]:
    """Renumber objects ``1..n`` in order of their old ids; 0 stays background."""
    lab = np.asarray(labels)
    return segmentation.relabel_sequential(lab.astype(np.int32, copy=False))[0].astype(np.int32, copy=False)


def _seed_unseeded(markers: NDArray[np.int32], foreground: NDArray[np.bool_]) -> NDArray[np.int32]:
    """Make every foreground component without a marker a marker of its own.

    Otherwise the watershed (``mask=foreground``) would leave it unlabelled and a
    faint or small nucleus would vanish from the output.
    """
    comps, n = ndimage.label(foreground)
    has_seed = np.zeros(n + 1, dtype=bool)
    has_seed[comps[markers > 0]] = True
    has_seed[0] = True
    unseeded = ~has_seed[comps]
    if not unseeded.any():
        return markers
    markers = markers.copy()
    markers[unseeded] = comps[unseeded] + markers.max()
    return markers


def _finish(labels: NDArray, cfg: PostConfig) -> NDArray[np.int32]:
    """Shared tail: fill holes (before the size filter, so rings count their inside), drop small, relabel."""
    if cfg.fill_holes:
        labels = fill_holes(labels)
    labels = remove_small(labels, cfg.min_size)
    return relabel_sequential(labels)


def _check_2d(arr: NDArray, name: str) -> NDArray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (H, W), got shape {arr.shape}")
    return arr


def _h_peaks(prob: NDArray, h: float) -> NDArray[np.bool_]:
    """The caps of the peaks of ``prob`` that rise at least ``h`` above their saddle to any higher
    peak: the pixels within ``h`` of such a peak's top. Peaks joined above that level share one
    cap; shallower bumps get none.

    The h-dome transform (``prob`` minus its reconstruction from ``prob - h``) is positive on the
    caps of every bump and reaches ``h`` on the tops of the deep ones (scikit-image's h-maxima); a cap
    is kept when it holds such a top. On a 1/1000 integer grid, where both are exact.
    """
    q = np.round(np.asarray(prob, dtype=np.float64) * 1000).astype(np.int32)
    step = max(1, int(round(h * 1000)))
    dome = q - morphology.reconstruction(q - step, q, method="dilation")  # the h-dome transform
    caps = ndimage.label(dome > 0, structure=np.ones((3, 3)))[0]  # 8-connected, as the reconstruction
    tops = dome >= step  # scikit-image's h_maxima, from the same reconstruction
    keep = np.zeros(caps.max() + 1, dtype=bool)
    keep[caps[tops]] = True  # tops lie inside caps, so the background (0) is never kept
    return keep[caps]


def instances_from_border_probs(probs: NDArray, cfg: PostConfig) -> NDArray[np.int32]:
    """Instance labels ``(H, W)`` int32 from 3-class probabilities ``(3, H, W)``.

    Channels are softmax probabilities ``[background, interior, border]``
    (``(4, H, W)``: ``[..., contact]``; every class but the background is foreground).
    Foreground is ``1 - p_bg > cfg.threshold``; seeds are the connected
    components of ``p_interior > cfg.seed_threshold`` inside the foreground.
    A watershed of ``-p_interior`` grows the seeds over the foreground, so the
    cut between touching nuclei follows the low-interior (border) ridge.
    ``cfg.seed_h > 0`` keeps of each seed only its peaks that stand at least
    ``seed_h`` above the saddle to a higher peak (h-maxima), so one seed holding
    two peaks with a dip between them becomes two. ``cfg.min_score > 0`` drops
    objects whose mean foreground probability is below it.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] not in (3, 4):
        raise ValueError(f"border probabilities must be (3, H, W) [bg, interior, border] (or (4, H, W) with contact), "
                         f"got shape {probs.shape}")
    foreground = (1.0 - probs[0]) > cfg.threshold
    interior = probs[1]
    seed_mask = (interior > cfg.seed_threshold) & foreground
    if cfg.seed_h > 0:
        seed_mask &= _h_peaks(interior, cfg.seed_h)
    seeds = ndimage.label(seed_mask)[0].astype(np.int32)
    markers = _seed_unseeded(seeds, foreground)
    labels = segmentation.watershed(-interior, markers=markers, mask=foreground)
    if cfg.min_score > 0:
        labels = _drop_unsure(labels, 1.0 - probs[0], cfg.min_score)
    return _finish(labels, cfg)


def _drop_unsure(labels: NDArray, prob: NDArray, min_score: float) -> NDArray:
    """Remove objects whose mean ``prob`` is below ``min_score`` (faint blobs the network half saw)."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    means = np.bincount(flat, weights=np.asarray(prob, dtype=np.float64).ravel()) / np.maximum(counts, 1)
    drop = (means < min_score) & (counts > 0)  # ids the watershed left unused are no objects
    drop[0] = False
    return np.where(drop[labels], 0, labels)


def instances_from_prob(prob: NDArray, cfg: PostConfig, h: float = 2.0) -> NDArray[np.int32]:
    """Instance labels ``(H, W)`` int32 from a foreground probability ``(H, W)``.

    Thresholds at ``cfg.threshold``, then splits touching blobs by a watershed of
    the negated distance transform seeded at its h-maxima: a blob is split only
    where its two parts are each at least ``h`` px "thicker" than the neck
    between them, which ignores the shallow spurious maxima of ragged outlines
    (unlike ``peak_local_max``, it needs no guess of the object size).
    ``cfg.seed_threshold`` is unused here. With ``cfg.fill_holes`` the mask's
    holes are filled first, including background enclosed by a ring of
    touching objects (set ``fill_holes=False`` for such data).
    """
    prob = _check_2d(prob, "foreground probability")
    foreground = threshold_mask(prob, cfg.threshold)
    if not foreground.any():
        return np.zeros(prob.shape, dtype=np.int32)
    if cfg.fill_holes:
        # Before the distance transform: a ring's distance map has a circle of
        # maxima and would be cut into pieces around its hole.
        foreground = ndimage.binary_fill_holes(foreground)
    dist = ndimage.distance_transform_edt(foreground)
    peaks = morphology.h_maxima(dist, h) if h > 0 else morphology.local_maxima(dist)
    seeds = ndimage.label(peaks.astype(bool) & foreground, structure=np.ones((3, 3)))[0].astype(np.int32)
    markers = _seed_unseeded(seeds, foreground)
    labels = segmentation.watershed(-dist, markers=markers, mask=foreground)
    return _finish(labels, cfg)


def cells_from_membrane(prob: NDArray, cfg: PostConfig) -> NDArray[np.int32]:
    """EM cell instances ``(H, W)`` int32 from a membrane probability ``(H, W)``: every pixel gets a cell.

    Seeds are the 4-connected components of ``prob < cfg.threshold`` (cell
    interiors) of at least ``cfg.min_size`` pixels; a watershed of ``prob``
    from them assigns every pixel, membranes included, to the cell whose basin
    it drains to, so cells meet along the membrane's ridge with zero-width
    boundaries (the label image a connectomics tool expects). Specks below
    ``min_size`` join their neighbours instead of becoming cells. An image with
    no seed is one cell.
    """
    prob = _check_2d(prob, "membrane probability")
    seeds = measure.label(prob < cfg.threshold, connectivity=1).astype(np.int32)
    seeds = remove_small(seeds, cfg.min_size)
    if not seeds.any():
        return np.ones(prob.shape, np.int32)
    return relabel_sequential(segmentation.watershed(prob, markers=seeds))


def foreground_prob(probs: NDArray) -> NDArray:
    """``(H, W)`` foreground probability from ``(H, W)``, ``(1, H, W)`` or softmax ``(C, H, W)``."""
    probs = np.asarray(probs)
    if probs.ndim == 2:
        return probs
    if probs.ndim == 3 and probs.shape[0] == 1:
        return probs[0]
    if probs.ndim == 3 and probs.shape[0] > 1:
        return 1.0 - probs[0]  # softmax with channel 0 = background
    raise ValueError(f"probabilities must be (H, W) or (C, H, W), got shape {probs.shape}")


def segment(probs: NDArray, cfg: PostConfig) -> NDArray:
    """Apply ``cfg`` to one image's network output; the entry point for ``predict``.

    * ``cfg.mode == "mask"``: uint8 ``(H, W)``, 255 = foreground, from ``(H, W)``
      or ``(1, H, W)`` probabilities (``1 - p_bg`` for a softmax ``(C, H, W)``).
      Only ``threshold`` applies: filling holes or dropping fragments would
      damage membrane maps, whose cells *are* the holes.
    * ``cfg.mode == "instances"``: int32 labels; a ``(3, H, W)`` or ``(4, H, W)`` input goes to
      :func:`instances_from_border_probs`, anything else to
      :func:`instances_from_prob` on its foreground probability.
    """
    probs = np.asarray(probs)
    if cfg.mode == "mask":
        return threshold_mask(foreground_prob(probs), cfg.threshold).astype(np.uint8) * np.uint8(255)
    if cfg.instances:
        if probs.ndim == 3 and probs.shape[0] in (3, 4):
            return instances_from_border_probs(probs, cfg)
        return instances_from_prob(foreground_prob(probs), cfg)
    raise ValueError(f"post.mode must be 'mask' or 'instances', got {cfg.mode!r}")


def tune_thresholds(
    probs_list: Sequence[NDArray],
    truths_list: Sequence[NDArray],
    post_fn: PostFn,
    score_fn: ScoreFn,
    grid: Mapping[str, Sequence[float]],
    base: PostConfig,
) -> tuple[PostConfig, float]:
    """Grid-search ``PostConfig`` fields for the best mean validation score.

    Every combination of ``grid`` values (e.g. ``{"threshold": [...],
    "seed_threshold": [...]}``) replaces the matching fields of ``base``; its
    score is the unweighted mean over images of ``score_fn(truth, post_fn(prob,
    cfg))`` (each image counts once, whatever its object count). Higher is
    better; ties go to the first combination in grid order, so list the values
    you prefer first. An empty grid scores ``base`` alone.
    """
    if len(probs_list) != len(truths_list):
        raise ValueError(f"got {len(probs_list)} probability maps but {len(truths_list)} ground truths")
    if not probs_list:
        raise ValueError("tune_thresholds needs at least one validation image")
    known = {f.name for f in dataclasses.fields(PostConfig)}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ValueError(f"grid keys {unknown} are not PostConfig fields (known: {', '.join(sorted(known))})")
    keys = list(grid)
    if any(len(grid[k]) == 0 for k in keys):
        raise ValueError("every grid entry needs at least one value")

    best_cfg, best_score = base, -np.inf
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = dataclasses.replace(base, **dict(zip(keys, values)))
        score = float(np.mean([score_fn(truth, post_fn(prob, cfg)) for prob, truth in zip(probs_list, truths_list)]))
        if score > best_score:
            best_cfg, best_score = cfg, score
    return best_cfg, best_score


# ---- block-wise instance labelling of huge images ------------------------------
MIN_HALO = 128
MIN_BLOCK = 2048


def blockwise_layout(object_diameter: float) -> tuple[int, int]:
    """(block, halo) for :func:`label_blockwise` on objects about ``object_diameter`` px across.

    The halo must hold an object and the neighbours that decide its watershed
    cut from the object's centroid: four diameters, and never less than
    ``MIN_HALO`` (128 px, which covers DSB-sized nuclei of up to 32 px). The
    block is eight halos (at least ``MIN_BLOCK``), so the halo reads add at most
    about half the block's area again. ``object_diameter`` 0 (unknown) gives
    the minimums.
    """
    halo = max(MIN_HALO, math.ceil(4 * max(0.0, object_diameter)))
    return max(MIN_BLOCK, 8 * halo), halo


def _anchored(labels: np.ndarray, core: tuple[int, int, int, int]) -> np.ndarray:
    """Per label: is the floor of its centroid inside ``core`` (y0, y1, x0, x1)?"""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    yy, xx = np.indices(labels.shape)
    count = np.bincount(flat, minlength=n)
    sy = np.bincount(flat, weights=yy.ravel(), minlength=n)  # exact: integer sums < 2**53
    sx = np.bincount(flat, weights=xx.ravel(), minlength=n)
    safe = np.maximum(count, 1)
    cy = sy.astype(np.int64) // safe
    cx = sx.astype(np.int64) // safe
    y0, y1, x0, x1 = core
    keep = (count > 0) & (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    keep[0] = False
    return keep


def label_blockwise(
    image: Any,
    label_fn: Callable[[np.ndarray], np.ndarray],
    block: int,
    halo: int,
    out: Any | None = None,
    progress: bool = False,
) -> Any:
    """Instance labels of a large (..., H, W) image computed block by block.

    Each ``block`` x ``block`` core is labelled with ``halo`` pixels of context
    on every side (clipped at the image border, where the whole-image labelling
    sees the border too). An object is kept by the one block whose core holds
    the floor of its centroid, and pasted whole, halo part included, onto
    still-unlabelled pixels of ``out``. Cores partition the image, so no object
    is duplicated, and none is cut as long as every object plus the context
    ``label_fn`` needs to label it the same way (for a seeded watershed: its
    touching neighbours) fits within ``halo`` of its centroid; then the result
    equals ``label_fn`` on the whole image up to a renumbering (see
    :func:`blockwise_layout`). ``label_fn`` maps a (..., h, w) window to (h, w)
    integer labels, 0 = background. ``out`` is an (H, W) integer array that
    must start at zero (np.zeros, a fresh memmap, zarr with fill_value 0); int32
    in memory when omitted. Labels are numbered 1.. in block raster order.
    Returns ``out``.
    """
    from tqdm.auto import tqdm

    if block < 1 or halo < 0:
        raise ValueError(f"block must be >= 1 and halo >= 0, got {block} and {halo}")
    height, width = image.shape[-2:]
    if out is None:
        out = np.zeros((height, width), np.int32)
    next_id = 1
    corners = [(y, x) for y in range(0, height, block) for x in range(0, width, block)]
    for y, x in tqdm(corners, unit="block", disable=None if progress else True, leave=False):
        wy0, wx0 = max(0, y - halo), max(0, x - halo)
        wy1, wx1 = min(height, y + block + halo), min(width, x + block + halo)
        labels = np.asarray(label_fn(np.asarray(image[..., wy0:wy1, wx0:wx1])))
        if labels.shape != (wy1 - wy0, wx1 - wx0):
            raise ValueError(f"label_fn returned shape {labels.shape} for a {(wy1 - wy0, wx1 - wx0)} window")
        core = (y - wy0, min(y + block, height) - wy0, x - wx0, min(x + block, width) - wx0)
        next_id = paste_labels(out, keep_anchored(labels, core), (wy0, wx0), next_id)
    return out


def keep_anchored(labels: np.ndarray, core: tuple[int, int, int, int]) -> np.ndarray:
    """The objects of a window's ``labels`` whose centroid (floored) lies in ``core`` (y0, y1, x0, x1, window
    coordinates), renumbered 1..n in the order of their ids; the rest 0. One block's share of
    :func:`label_blockwise`, which any process can compute on its own."""
    keep = np.flatnonzero(_anchored(labels.astype(np.int64, copy=False), core))
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def paste_labels(out: Any, kept: np.ndarray, origin: tuple[int, int], next_id: int) -> int:
    """Paste a block's :func:`keep_anchored` objects into ``out`` at ``origin`` (y, x) as ids ``next_id..``, onto
    still-unlabelled pixels only; returns the next free id. Blocks pasted in raster order give
    :func:`label_blockwise`'s result, whichever process labelled them."""
    n = int(kept.max(initial=0))
    if not n:
        return next_id
    y0, x0 = origin
    y1, x1 = y0 + kept.shape[0], x0 + kept.shape[1]
    pasted = np.where(kept > 0, kept.astype(np.int64) + (next_id - 1), 0)
    region = np.asarray(out[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = np.where((pasted > 0) & (region == 0), pasted, region)
    return next_id + n
