"""Pictures a person can look at: masks and instance outlines drawn over the image, with a legend.

Outlines are two pixels wide, inside each object (never over a neighbour),
in one colour of the Okabe-Ito colour-blind-safe palette: the one farthest
from the image pixels under the outlines, so they stay visible on black
fluorescence, white brightfield and purple H&E alike. A small legend names
the model and counts the objects.
"""
from __future__ import annotations

import numpy as np

# Okabe & Ito (2008), colours distinguishable with every common colour-vision deficiency
PALETTE = {
    "yellow": (240, 228, 66),
    "sky blue": (86, 180, 233),
    "vermillion": (213, 94, 0),
    "bluish green": (0, 158, 115),
    "reddish purple": (204, 121, 167),
}


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """Any (H, W[, C]) image -> uint8 RGB, contrast-stretched to 0.5..99.8 percentiles."""
    img = image.astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3] if img.shape[-1] >= 3 else np.repeat(img[..., :1], 3, axis=-1)
    else:
        img = np.repeat(img[..., None], 3, axis=-1)
    lo, hi = np.percentile(img, (0.5, 99.8))
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return (img * 255).astype(np.uint8)


def outline_colour(rgb: np.ndarray, where: np.ndarray) -> tuple[int, int, int]:
    """The palette colour with the largest mean distance to the pixels of ``rgb`` under ``where``."""
    pixels = rgb[where] if where.any() else rgb.reshape(-1, 3)
    pixels = pixels[:: max(1, len(pixels) // 20000)].astype(np.float32)
    best = max(PALETTE.values(), key=lambda c: float(np.linalg.norm(pixels - np.float32(c), axis=1).mean()))
    return best


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Two-pixel outlines inside each object: visible at a glance, never over a neighbour."""
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    shrunk = np.where(edges, 0, labels)
    edges |= find_boundaries(shrunk, mode="inner") & (shrunk > 0) & (labels == shrunk)
    return edges


def legend(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a dark box in the top-left corner (Pillow's built-in font)."""
    from PIL import Image, ImageDraw

    pic = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pic)
    box = draw.textbbox((4, 3), text)
    if box[2] + 4 > pic.width or box[3] + 3 > pic.height:  # too small an image for a legend
        return rgb
    draw.rectangle((0, 0, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(pic)


def overlay(image: np.ndarray, seg: np.ndarray, alpha: float = 0.35, title: str = "") -> np.ndarray:
    """Mask (bool or 0/255) -> translucent fill + outline; labels -> outlines; (H, W, 3) uint8.

    A 2-valued array is treated as a mask, anything with more values as
    instance labels. ``title`` (e.g. the model's name) starts the legend,
    which also counts the objects; an empty title and no objects draw none.
    """
    rgb = to_display_rgb(image)
    seg = np.asarray(seg)
    if seg.dtype == bool or np.unique(seg).size <= 2 and seg.max() in (1, 255):
        mask = seg > 0
        edges = _outlines(mask.astype(np.int32))
        colour = np.float32(outline_colour(rgb, edges))
        out = rgb.astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[edges] = colour
        text = f"{title}  {100 * mask.mean():.1f} % foreground" if title else ""
    else:
        labels = seg.astype(np.int64)
        edges = _outlines(labels)
        out = rgb.copy()
        out[edges] = outline_colour(rgb, edges)
        n = len(np.unique(labels[labels > 0]))
        text = f"{title}  {n} object{'s' if n != 1 else ''}".strip() if title or n else ""
    out = out.astype(np.uint8)
    return legend(out, text) if text else out
