"""Instance labels -> training targets (binary masks, 3/4-class border maps, weight maps).

Everything here is a pure numpy function of an ``(H, W)`` label image
(0 = background, ``k > 0`` = object ``k``) and cheap enough to run per 256x256
patch inside a ``DataLoader`` worker: the per-object loops only touch each
object's neighbourhood, never the whole image.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..labels import check_labels

__all__ = ["binary_target", "border_target", "contact_target", "depth_target", "unet_weight_map",
           "balanced_class_weights"]

# The touching term w0*exp(-(d1+d2)^2 / (2 sigma^2)) is computed exactly wherever
# d1 + d2 <= R; beyond R it is left out, an absolute error of at most this value
# (in units of loss weight, where an average pixel weighs ~1).
_TOUCH_TOL = 1e-3


def _check_labels(labels: NDArray) -> NDArray[np.int64]:
    """Validated labels as int64 (find_objects needs ints >= 0)."""
    return check_labels(labels).astype(np.int64, copy=False)


def binary_target(labels_or_mask: NDArray, foreground: str = "nonzero") -> NDArray[np.float32]:
    """Foreground mask as float32 ``{0, 1}`` of the same shape.

    ``foreground="zero"`` is for datasets whose foreground is stored as 0, such
    as the ISBI 2012 EM labels (0 = membrane, 255 = cell interior).
    """
    arr = np.asarray(labels_or_mask)
    if foreground == "nonzero":
        return (arr != 0).astype(np.float32)
    if foreground == "zero":
        return (arr == 0).astype(np.float32)
    raise ValueError(f"foreground must be 'nonzero' or 'zero', got {foreground!r}")


def _disk(radius: int) -> NDArray[np.bool_]:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def border_target(
    labels: NDArray, border_width: int = 2, contours: bool = False, border_fraction: float = 0.0
) -> NDArray[np.uint8]:
    """3-class target ``(H, W)`` uint8: 0 background, 1 object interior, 2 touching border.

    Class 2 marks object pixels lying within ``border_width`` px (Euclidean,
    centre to centre) of a pixel of a *different* object. Touching objects thus
    get a band ``border_width`` px deep on each side of their shared edge, and
    objects separated by a gap of ``g`` px get a band ``border_width - g`` deep.

    Why touching-only rather than every object contour: the border class exists
    to cut touching nuclei apart (as in the DSB 2018 winning solutions), so it is
    spent where a separation is needed; isolated nuclei keep their full extent
    as class 1, so their seeds are not shrunk and ``1 - p(background)`` still
    delineates them. Background pixels in narrow gaps stay class 0, so predicted
    objects are not inflated into the gap.

    ``contours=True`` (``data.target = "contour3"``) makes class 2 the inner band
    of *every* object outline instead: object pixels within ``border_width`` px
    of background or of another object. The border is then a local edge the
    network sees on every nucleus, not only where two touch, and the interior
    (the watershed seeds) is each object shrunk by ``border_width``. The image
    edge is not an outline (an object cut by a patch edge goes on beyond it).

    ``border_fraction`` (contours only) widens each object's band to
    ``max(border_width, border_fraction * r)``, where ``r`` is the object's
    largest distance to its own outline (its inscribed radius). A fixed 2 px
    band barely cuts a 40 px nucleus from its neighbour; a band relative to
    the size leaves every object a seed of about the same *relative* size.
    """
    lab = _check_labels(labels)
    if border_width < 0:
        raise ValueError(f"border_width must be >= 0, got {border_width}")
    if border_fraction < 0:
        raise ValueError(f"border_fraction must be >= 0, got {border_fraction}")
    if contours:
        return _contour_band(lab, border_width, border_fraction)
    out = (lab > 0).astype(np.uint8)
    if border_width == 0 or not out.any():
        return out
    foot = _disk(int(border_width))
    # A pixel of object k sees another object within the disk iff the largest or
    # the smallest nonzero label in its disk differs from k; background is kept
    # out of the minimum by mapping it to +inf.
    big = np.iinfo(np.int64).max
    hi = ndimage.maximum_filter(lab, footprint=foot, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(lab > 0, lab, big), footprint=foot, mode="constant", cval=big)
    touching = (lab > 0) & ((hi != lab) | (lo != lab))
    out[touching] = 2
    return out


def contact_target(labels: NDArray, border_fraction: float = 0.0, contact_width: int = 3) -> NDArray[np.uint8]:
    """4-class target ``(H, W)`` uint8: :func:`border_target` with ``contours=True``, plus class 3.

    Class 3 (contact) marks the object pixels within ``contact_width`` px of a
    *different* object: where two nuclei touch, on both sides of the cut. The
    outline band (class 2) then holds only the outline against background.
    Why a class of its own: contacts are a few percent of the band, so in one
    band class the network can draw every outline well and still miss the cut
    between two touching nuclei; as a class, the contact gets its own Dice term.
    """
    out = border_target(labels, contours=True, border_fraction=border_fraction)
    out[border_target(labels, border_width=contact_width) == 2] = 3
    return out


def depth_target(labels: NDArray) -> NDArray[np.float32]:
    """Soft 3-class target ``(3, H, W)`` float32: background, interior, outline band as probabilities.

    An object pixel at distance ``d`` from its outline, in an object of inscribed radius ``r``,
    is interior with probability ``d / r`` (its depth: 1 on the centre line, ~0 on the outline)
    and outline band with ``1 - d / r``; background pixels are background with probability 1.
    Its argmax is the ``contour3`` target with ``border_fraction = 0.5`` (without its 2 px minimum band); soft,
    the interior probability the network learns is a centre-ness map whose peaks are the nuclei's
    centres, so the seeds (``seed_threshold``, ``seed_h``) can split touching nuclei at a level that
    is tuned after training instead of fixed in the target.
    """
    lab = _check_labels(labels)
    out = np.zeros((3, *lab.shape), dtype=np.float32)
    out[0] = lab == 0
    if not (lab > 0).any():
        return out
    dist, radius = _outline_distance_and_radius(lab)
    obj = lab > 0
    # an object without outline (it fills the patch) is interior throughout
    depth = np.where(np.isfinite(dist), dist / np.maximum(radius, 1e-9), 1.0)
    out[1][obj] = np.clip(depth[obj], 0.0, 1.0)
    out[2][obj] = 1.0 - out[1][obj]
    return out


def _outline_distance(lab: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per object pixel, the Euclidean distance to the nearest pixel of another value.

    Background and other objects both count as outside; the image edge does
    not (pixels beyond it are unknown, and an object cut by a patch edge goes
    on beyond it). An object filling the whole image has no outline: ``inf``.
    """
    dist = np.zeros(lab.shape, dtype=np.float64)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        # One pixel of margin holds the nearest outside pixel of every object
        # pixel (projecting any nearer-looking one onto the box only gets closer).
        grow = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        obj = lab[grow] == k
        # (scipy's EDT of an all-True array is not "infinitely far", so say it here)
        dist[grow][obj] = ndimage.distance_transform_edt(obj)[obj] if not obj.all() else np.inf
    return dist


def _outline_distance_and_radius(lab: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """:func:`_outline_distance` and, per pixel, its object's inscribed radius (the largest finite
    distance in the object; 0 for an object without outline and for the background)."""
    dist = _outline_distance(lab)
    radius = ndimage.maximum(np.where(np.isfinite(dist), dist, 0.0), lab, index=np.arange(lab.max() + 1))
    return dist, np.asarray(radius)[lab]


def _contour_band(lab: NDArray[np.int64], border_width: int, fraction: float) -> NDArray[np.uint8]:
    """The contour band of :func:`border_target`: ``max(border_width, fraction * r)`` deep per object."""
    out = (lab > 0).astype(np.uint8)
    if not out.any():
        return out
    dist, radius = _outline_distance_and_radius(lab)
    # An object without outline (dist = inf) gets radius 0 and, being inf away, no band.
    band = np.maximum(float(border_width), fraction * radius)
    out[(lab > 0) & (dist <= band)] = 2
    return out


def balanced_class_weights(labels: NDArray, max_weight: float = 10.0) -> tuple[float, float]:
    """``(w_background, w_foreground)`` with ``w_c = n_total / (2 n_c)``, clipped at ``max_weight``.

    This makes both classes contribute equally to the loss and the average
    pixel weigh 1 (before clipping). Clipping keeps a patch with a few
    foreground pixels from giving them weights in the thousands. A class that
    is absent gets weight 1 for the present one (nothing to balance).
    """
    lab = np.asarray(labels)
    n = lab.size
    n_fg = int(np.count_nonzero(lab))
    n_bg = n - n_fg
    if n_fg == 0 or n_bg == 0:
        return 1.0, 1.0
    return min(n / (2.0 * n_bg), max_weight), min(n / (2.0 * n_fg), max_weight)


def unet_weight_map(
    labels: NDArray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] | None = None,
    max_class_weight: float = 10.0,
    touching: Literal["background", "all"] = "background",
) -> NDArray[np.float32]:
    """Pixel loss weights ``(H, W)`` float32 of Ronneberger et al. (2015), eq. 2.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` where ``d1``
    and ``d2`` are the distances to the nearest and second-nearest object. The
    touching term is added on background pixels only (as in the paper's figure
    and most implementations): it is there to force the network to learn the
    thin background gaps between touching cells. With fewer than two objects it
    is zero everywhere. ``touching="all"`` adds it on object pixels too (there
    ``d1`` = 0, ``d2`` = distance to the nearest other object): nuclei that
    touch have no background between them, and the pixels to learn are the
    outline bands on both sides of the cut.

    ``w_c`` is ``class_weights = (w_background, w_foreground)`` if given, else
    :func:`balanced_class_weights` of this label image (clipped at
    ``max_class_weight``). Computed per patch, so balancing follows the patch.

    Distances are computed per object on its bounding box dilated by ``R``,
    where ``R`` is the smallest ``d1 + d2`` at which the touching term drops
    below 1e-3; the result equals the full computation up to that tolerance,
    and costs a few ms for a 256x256 patch with dozens of nuclei.
    """
    lab = _check_labels(labels)
    if touching not in ("background", "all"):
        raise ValueError(f"touching must be 'background' or 'all', got {touching!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if class_weights is None:
        w_bg, w_fg = balanced_class_weights(lab, max_class_weight)
    else:
        if len(class_weights) != 2:
            raise ValueError(f"class_weights must be (w_background, w_foreground), got {class_weights!r}")
        w_bg, w_fg = (float(w) for w in class_weights)
    fg = lab > 0
    weights = np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)
    if w0 == 0 or not fg.any():
        return weights

    if lab.max() > lab.size:  # sparse huge ids would make find_objects allocate a huge list
        lab = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)
    boxes = [(k + 1, sl) for k, sl in enumerate(ndimage.find_objects(lab)) if sl is not None]
    if len(boxes) < 2:
        return weights

    # Solve |w0| exp(-R^2 / (2 sigma^2)) = tol for R; a |w0| below tol needs no neighbours.
    ratio = abs(w0) / _TOUCH_TOL
    radius = sigma * math.sqrt(2.0 * math.log(ratio)) if ratio > 1 else 0.0
    margin = int(math.ceil(radius))
    height, width = lab.shape
    d1 = np.full(lab.shape, np.inf, dtype=np.float64)
    d2 = np.full(lab.shape, np.inf, dtype=np.float64)
    for k, (rows, cols) in boxes:
        r0, r1 = max(rows.start - margin, 0), min(rows.stop + margin, height)
        c0, c1 = max(cols.start - margin, 0), min(cols.stop + margin, width)
        # The crop holds all of object k, so its EDT is the exact distance to k.
        dist = ndimage.distance_transform_edt(lab[r0:r1, c0:c1] != k)
        n1 = d1[r0:r1, c0:c1]
        n2 = d2[r0:r1, c0:c1]
        np.minimum(n2, np.maximum(n1, dist), out=n2)
        np.minimum(n1, dist, out=n1)

    touch_px = np.isfinite(d2) if touching == "all" else ~fg & np.isfinite(d2)
    s = d1[touch_px] + d2[touch_px]
    weights[touch_px] += (w0 * np.exp(-(s * s) / (2.0 * sigma * sigma))).astype(np.float32)
    return weights
