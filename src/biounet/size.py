"""Object-size estimation and the rescale around prediction (``--diameter auto``).

A network trained on nuclei about ``train_diameter`` pixels across misses or shatters nuclei far
from that size. Before segmenting, the image is probed at a few down-scales (``PROBE_SCALES``: one
full pass plus up to 0.31 of one); each probe is segmented and measured, from fine to coarse, until two
neighbouring probes agree on the size. :func:`pick_diameter` says which probe is trusted; its median
object diameter, divided by its scale, is
the estimate. The image is then resized so that estimate meets ``train_diameter``; when it already
does (within ``NATIVE_BAND``) the native probe is the answer and nothing more runs, so images at the
training scale are segmented exactly as without estimation, and a probe at the right scale is reused.

Pure: the network and the post-processing come in as callables, so this module knows no model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

PROBE_SCALES = (1.0, 0.5, 0.25)  # a full pass, a quarter and a sixteenth of its pixels: 1.31 passes
# estimate within x/÷ this of the training diameter: keep the image as it is. The network has seen these
# sizes: the middle 90 % of the DSB 2018 training images' median nucleus diameters (9.6-49.6 px,
# configs/dsb2018-groups.csv) lie within x/÷ 2.3 of their 22 px median; resizing such images towards the
# median cost held-out score before (benchmarks/tried/dsb-scale.json: 0.593 at x/÷ 1.3, 0.606 at 2.5, 0.6125 never)
NATIVE_BAND = 2.25
AGREE = 1.3  # two probes whose medians (in image px) are this close confirm each other
REUSE_BAND = 1.25  # a probe this close to the wanted scale is used as the pass (training zooms x0.8-1.25)
PROBE_MAX_SIDE = 1024  # larger images are probed on their central crop this size
MIN_OBJECTS = 3  # a probe with fewer objects says nothing about size
MAX_SCALE = 4.0  # never enlarge more than this (x4 = 16x the pixels), nor shrink below 1 / it


@dataclass(frozen=True)
class SizeEstimate:
    """The typical object diameter found in one image and the resize applied for it.

    ``diameter`` is in the image's own pixels (0 when no probe found ``MIN_OBJECTS`` objects);
    ``scale`` is the resize factor used before the network (1 = native).
    """

    diameter: float
    scale: float
    objects: int


@dataclass(frozen=True)
class Probe:
    """A probe of the whole image at the scale the estimate asks for: its probabilities and the labels
    segmented from them to measure the objects, so the caller runs neither again."""

    probs: np.ndarray
    labels: np.ndarray


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameters (px) of the objects of an (H, W) label image, ``2 sqrt(area / pi)``."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def _usable(probes: list[tuple[float, np.ndarray]]) -> list[tuple[float, np.ndarray]]:
    """The probes with at least ``MIN_OBJECTS`` objects, finest first."""
    return sorted(((s, d) for s, d in probes if len(d) >= MIN_OBJECTS), key=lambda p: -p[0])


def _agree(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> bool:
    """Whether two probes measure the same median object size in image pixels, within x/÷ ``AGREE``."""
    return abs(np.log((np.median(a[1]) / a[0]) / (np.median(b[1]) / b[0]))) <= np.log(AGREE)


def pick_diameter(train_diameter: float, probes: list[tuple[float, np.ndarray]]) -> tuple[float, int]:
    """(estimated diameter in image px, objects it rests on) from ``(scale, diameters in probe px)`` probes.

    1. An estimate is trusted when the next coarser probe confirms it: objects measured right at one
       scale measure the same in image pixels at half that scale (within x/÷ ``AGREE``). The finest
       confirmed probe wins, and with it the detail of that scale.
    2. Unconfirmed, the finest probe whose median is a size the network knows (within x/÷
       ``NATIVE_BAND`` of the training diameter) wins: the network saw objects it was trained on there.
       On a kind of image it never saw, probes rarely agree (brightfield: at 0.25x whole cells, their
       cytoplasm a plateau around the nucleus, shrink to nucleus size), and the finest view is the safest.
    3. Else the probe whose median is closest to the training diameter on a log scale (nuclei too small
       or too large for all but one probe).

    Step 1 comes first because a fine probe can find training-sized specks on nuclei far too large for
    it, which the two coarser probes, agreeing, overrule. (0, 0) when no probe has ``MIN_OBJECTS`` objects.
    """
    usable = _usable(probes)
    if not usable or train_diameter <= 0:
        return 0.0, 0
    confirmed = [a for a, b in zip(usable, usable[1:]) if _agree(a, b)]
    known = [p for p in usable if abs(np.log(np.median(p[1]) / train_diameter)) <= np.log(NATIVE_BAND)]
    nearest = min(usable, key=lambda p: abs(np.log(np.median(p[1]) / train_diameter)))
    s, d = (confirmed or known or [nearest])[0]
    return float(np.median(d) / s), len(d)


def settled(probes: list[tuple[float, np.ndarray]]) -> bool:
    """Whether coarser probes can no longer change :func:`pick_diameter`: the two coarsest usable probes
    so far agree (every finer pair was checked before), so the rest need not run."""
    usable = _usable(probes)
    return len(usable) >= 2 and _agree(usable[-2], usable[-1])


def scale_for(diameter: float, train_diameter: float) -> float:
    """The resize that brings objects ``diameter`` px across to ``train_diameter``; 1 inside ``NATIVE_BAND``."""
    if diameter <= 0 or train_diameter <= 0:
        return 1.0
    scale = train_diameter / diameter
    if 1 / NATIVE_BAND <= scale <= NATIVE_BAND:
        return 1.0
    return float(np.clip(scale, 1 / MAX_SCALE, MAX_SCALE))


def centre_crop(x: np.ndarray, side: int = PROBE_MAX_SIDE) -> np.ndarray:
    """The central ``side`` x ``side`` window of a (C, H, W) array (all of it when smaller)."""
    h, w = x.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return x[:, top : top + side, left : left + side]


def estimate(
    x: Any,
    train_diameter: float,
    predict_at: Callable[[np.ndarray, float], np.ndarray],
    segment: Callable[[np.ndarray], np.ndarray],
) -> tuple[SizeEstimate, Probe | None]:
    """Estimate the object size of a normalised (C, H, W) image (an array or a lazy view sliced
    ``x[:, rows, cols]``); maybe hand back the pass itself.

    ``predict_at(x, scale)`` returns (K, H, W) probabilities at ``x``'s own size with the network
    run on ``x`` resized by ``scale``; ``segment(probs)`` returns instance labels. Returns the
    estimate and, when the image was probed whole at the scale the estimate asks for, that
    :class:`Probe` (probabilities and labels: no further pass, no second segmentation); else None,
    and the caller runs ``predict_at(x, scale)``.
    """
    whole = max(x.shape[-2:]) <= PROBE_MAX_SIDE
    region = np.ascontiguousarray(np.asarray(x) if whole else centre_crop(x))
    probes, done = [], {}
    for s in PROBE_SCALES:
        if min(region.shape[-2:]) * s < 16:  # too small to say anything
            continue
        probs = predict_at(region, s)
        labels = segment(probs)
        done[s] = Probe(probs, labels)
        probes.append((s, object_diameters(labels) * s))  # in the probe's pixels
        if settled(probes):  # confirmed: coarser probes cannot change the estimate
            break
    diameter, n = pick_diameter(train_diameter, probes)
    scale = scale_for(diameter, train_diameter)
    near = sorted(done, key=lambda s: abs(np.log(scale / s)))
    if whole and near and abs(np.log(scale / near[0])) <= np.log(REUSE_BAND):
        return SizeEstimate(diameter=round(diameter, 2), scale=near[0], objects=n), done[near[0]]
    return SizeEstimate(diameter=round(diameter, 2), scale=scale, objects=n), None
