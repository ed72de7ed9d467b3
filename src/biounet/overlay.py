"""Pictures a person can look at: masks and instance outlines drawn over the image, with a legend.

Outlines lie inside each object (never over a neighbour), two pixels wide up
to 1024 px and wider on larger images (:func:`outline_width`), in one colour
of the Okabe-Ito colour-blind-safe palette: the one farthest from the image
pixels under the outlines, so they stay visible on black fluorescence, white
brightfield and purple H&E alike. A legend names the model and counts the
objects; its font grows with the image (:func:`font_size`) and it sits where
it hides the fewest labelled pixels (:func:`place_box`).
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


BITMAP_FONT_PX = 11  # line height of Pillow's built-in bitmap font, the smallest legend font


def font_size(shape: tuple[int, ...]) -> int:
    """Legend font size (px) for an image of ``shape``: 1/64 of its longer side, at least 11 px.

    16 px at 1024 px, 62 px at 4000 px: about 1.5 % of the picture, so the legend reads the same
    whether a viewer shows the picture at full size or fitted to a screen.
    """
    return max(BITMAP_FONT_PX, round(max(shape[:2]) / 64))


def outline_width(shape: tuple[int, ...], labels: np.ndarray | None = None) -> int:
    """Outline width (px): 2 up to 1024 px, then 1/512 of the longer side (8 at 4000 px).

    With ``labels``, at most a sixth of the median object diameter (never under 2), so small
    objects in a large image keep their insides visible.
    """
    width = max(2, round(max(shape[:2]) / 512))
    if labels is not None and width > 2:
        ids = labels[labels > 0]
        if ids.size:
            areas = (np.bincount(ids.astype(np.int64)) if int(ids.max()) <= 4 * ids.size
                     else np.unique(ids, return_counts=True)[1])
            diameter = 2 * np.sqrt(np.median(areas[areas > 0]) / np.pi)
            width = max(2, min(width, int(diameter / 6)))
    return width


def _outlines(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Outlines ``width`` pixels wide inside each object: visible at a glance, never over a neighbour.

    A pixel is on the outline when a pixel of another label (or background) lies within
    ``width`` steps (4-connected); the image border is no boundary.
    """
    from scipy import ndimage as ndi

    cross = ndi.generate_binary_structure(2, 1)
    lo = hi = labels
    for _ in range(width):
        lo = ndi.grey_erosion(lo, footprint=cross)
        hi = ndi.grey_dilation(hi, footprint=cross)
    return (labels > 0) & ((lo != labels) | (hi != labels))


Entry = tuple[str, "tuple[int, int, int] | None"]  # a legend line: text and an optional colour swatch


def _font(size: int):
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError, AttributeError):
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None  # without FreeType: the bitmap font


def legend_box(entries: str | list[Entry], size: int) -> np.ndarray:
    """The legend alone: white text (``size`` px font) on black, one line per entry, each line led
    by its colour swatch when it has one. Returns (h, w, 3) uint8."""
    from PIL import Image, ImageDraw

    if isinstance(entries, str):
        entries = [(entries, None)]
    font = _font(size)
    zoom = 1
    if font is None:  # the bitmap font, drawn small and enlarged
        zoom, size = -(-size // BITMAP_FONT_PX), BITMAP_FONT_PX
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = size + max(2, size // 4)
    pad = max(3, size // 3)
    swatch = round(size * 0.8) if any(c is not None for _, c in entries) else 0
    text_x = pad + (swatch + pad if swatch else 0)
    widths = [probe.textbbox((0, 0), text, font=font)[2] for text, _ in entries]
    pic = Image.new("RGB", (text_x + max(widths) + pad, 2 * pad + line * len(entries) - (line - size)), (0, 0, 0))
    draw = ImageDraw.Draw(pic)
    for k, (text, colour) in enumerate(entries):
        top = pad + k * line
        if colour is not None:
            y = top + (size - swatch) // 2
            draw.rectangle((pad, y, pad + swatch - 1, y + swatch - 1), fill=tuple(colour))
        draw.text((text_x, top), text, fill=(255, 255, 255), font=font)
    box = np.asarray(pic)
    return np.repeat(np.repeat(box, zoom, axis=0), zoom, axis=1) if zoom > 1 else box


def place_box(occupied: np.ndarray, box_hw: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a box of ``box_hw`` over the fewest ``True`` pixels of ``occupied``.

    Tries the four corners, then the middles of the four sides; the first of the least covered
    wins, so an empty picture keeps its legend top-left.
    """
    h, w = occupied.shape
    bh, bw = box_hw
    spots = [(0, 0), (0, w - bw), (h - bh, 0), (h - bh, w - bw),
             (0, (w - bw) // 2), (h - bh, (w - bw) // 2), ((h - bh) // 2, 0), ((h - bh) // 2, w - bw)]
    return min(spots, key=lambda s: int(np.count_nonzero(occupied[s[0] : s[0] + bh, s[1] : s[1] + bw])))


def legend(rgb: np.ndarray, text: str | list[Entry], occupied: np.ndarray | None = None,
           size: int | None = None) -> np.ndarray:
    """``text`` (or legend entries) in white on a black box, its font ``size`` px (by default scaled
    to the image, :func:`font_size`), placed over the fewest ``occupied`` pixels (:func:`place_box`;
    top-left when not given). An image too small for the box gets none."""
    box = legend_box(text, size or font_size(rgb.shape))
    bh, bw = box.shape[:2]
    if bh > rgb.shape[0] or bw > rgb.shape[1]:  # too small an image for a legend
        return rgb
    y, x = place_box(occupied if occupied is not None else np.zeros(rgb.shape[:2], bool), (bh, bw))
    out = rgb.copy()
    out[y : y + bh, x : x + bw] = box
    return out


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
        edges = _outlines(mask.astype(np.int32), outline_width(mask.shape))
        colour = np.float32(outline_colour(rgb, edges))
        out = rgb.astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[edges] = colour
        text = f"{title}  {100 * mask.mean():.1f} % foreground" if title else ""
    else:
        labels = seg.astype(np.int64)
        mask = labels > 0
        edges = _outlines(labels, outline_width(labels.shape, labels))
        out = rgb.copy()
        out[edges] = outline_colour(rgb, edges)
        n = len(np.unique(labels[mask]))
        text = f"{title}  {n} object{'s' if n != 1 else ''}".strip() if title or n else ""
    out = out.astype(np.uint8)
    return legend(out, text, occupied=mask) if text else out
