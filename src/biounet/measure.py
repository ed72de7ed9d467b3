"""Per-object measurements of instance labels: the table a biologist reads after segmenting.

One row per object with where it is, its size and shape, and the intensity of the raw image under it
(per channel for colour images), by scikit-image's ``regionprops_table``. ``predict --measure`` writes
it as ``<stem>.csv`` beside each label image; a stack gets a ``page`` column.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_path

# regionprops names -> column names (y, x: row and column of the centroid, in pixels)
SHAPE = {"label": "label", "centroid-0": "y", "centroid-1": "x", "area": "area", "perimeter": "perimeter",
         "equivalent_diameter_area": "equivalent_diameter", "axis_major_length": "major_axis",
         "axis_minor_length": "minor_axis", "eccentricity": "eccentricity", "solidity": "solidity"}
INTENSITY = ("intensity_mean", "intensity_min", "intensity_max")


def object_table(labels: np.ndarray, image: Any = None, pixel_size: float | None = None) -> dict[str, np.ndarray]:
    """Columns of per-object measurements of an (H, W) label image, ordered by label.

    ``touches_border`` is 1 for objects cut by the image edge, whose size and shape are partial
    (counts usually leave them out). ``image`` (H, W) or (H, W, C), as read from the file, adds the
    mean, min and max intensity under each object (``mean_intensity``, or ``mean_intensity_0..C-1``
    for several channels), measured on the raw values, not the network's normalised input, so numbers
    compare across images. ``pixel_size`` (micrometres per pixel) adds the positions, lengths and
    area in micrometres (``*_um``, ``area_um2``).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    props = ["label", "centroid", *[k for k in SHAPE if k not in ("label", "centroid-0", "centroid-1")]]
    intensity = None
    if image is not None:
        intensity = np.asarray(image)
        if intensity.shape[:2] != labels.shape:
            raise ValueError(f"image size {intensity.shape[:2]} != label size {labels.shape}")
        if intensity.ndim == 3 and _same_channels(intensity):
            intensity = intensity[..., 0]  # a gray image saved as RGB: one set of intensity columns
        props += list(INTENSITY)
    raw = regionprops_table(labels.astype(np.int32, copy=False), intensity_image=intensity, properties=props)
    table = {SHAPE[k]: v for k, v in raw.items() if k in SHAPE}
    edge = np.zeros(labels.max() + 1 if labels.size else 1, dtype=np.int64)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = 1
    table["touches_border"] = edge[table["label"]]
    return finish_table(table, raw, pixel_size)


def finish_table(table: dict[str, np.ndarray], raw: dict[str, np.ndarray],
                 pixel_size: float | None) -> dict[str, np.ndarray]:
    """The columns every object table shares after the shape ones: micrometres when ``pixel_size`` is
    given, and regionprops' ``intensity_*`` columns renamed (``intensity_mean-2`` -> ``mean_intensity_2``)."""
    if pixel_size is not None:
        if not pixel_size > 0:
            raise ValueError(f"pixel size must be > 0 micrometres, got {pixel_size}")
        for k in ("y", "x", "perimeter", "equivalent_diameter", "major_axis", "minor_axis"):
            table[f"{k}_um"] = table[k] * pixel_size
        table["area_um2"] = table["area"] * pixel_size**2
    for k, v in raw.items():
        if k.startswith("intensity_"):  # "intensity_mean" or "intensity_mean-2" -> "mean_intensity(_2)"
            stat, _, ch = k[len("intensity_"):].partition("-")
            table[f"{stat}_intensity" + (f"_{ch}" if ch else "")] = v
    return table


def _same_channels(image: Any, rows: int = 1024) -> bool:
    """Whether every channel of an (H, W, C) image equals the first, compared in row blocks (a memory map
    of a whole slide is never held twice)."""
    for y in range(0, image.shape[0], rows):
        block = np.asarray(image[y : y + rows])
        if not (block == block[..., :1]).all():
            return False
    return True


def with_size(table: dict[str, np.ndarray], size: Any) -> dict[str, np.ndarray]:
    """``table`` plus ``estimated_diameter`` (px, one value per image, from ``--diameter auto``) when
    ``size`` (a :class:`biounet.size.SizeEstimate`) is given; unchanged otherwise."""
    if size is None:
        return table
    return {**table, "estimated_diameter": np.full(len(table["label"]), float(size.diameter))}


def write_table(path: str | Path, tables: Sequence[dict[str, np.ndarray]], pages: bool = False) -> Path:
    """Write one or more object tables as one CSV, atomically; ``pages`` adds the table's index as ``page``."""
    path = Path(path)
    columns = list(tables[0]) if tables else list(SHAPE.values())
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow((["page"] if pages else []) + columns)
            for page, table in enumerate(tables):
                for i in range(len(table["label"])):
                    out.writerow(([page] if pages else []) + [_fmt(table[c][i]) for c in columns])
    return path


def _fmt(v: Any) -> str:
    """Integers as integers, floats to 6 significant digits (pixels and intensities need no more)."""
    v = np.asarray(v).item()
    return str(v) if isinstance(v, (int, np.integer)) else f"{v:.6g}"
