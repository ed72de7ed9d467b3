"""Object outlines as polygons, for the tools biologists draw and measure in: Fiji/ImageJ ROI sets and
GeoJSON (QuPath, napari-geojson, GIS tools).

``predict --outlines imagej`` writes ``<stem>_rois.zip`` (open with Fiji's ROI Manager), ``--outlines
geojson`` writes ``<stem>.geojson``. Coordinates follow both tools' pixel convention: pixel (x, y) covers
[x, x + 1) x [y, y + 1), so an outline runs along the object's pixel edges' midpoints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .io import atomic_path

FORMATS = ("imagej", "geojson")


def polygons(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(label, (N, 2) x/y vertices) per object of an (H, W) label image, in label order.

    The outline is the 0.5 iso-line of the object's mask (scikit-image's marching squares) around its
    largest part; holes are not traced (nuclei have none after post-processing).
    """
    from skimage.measure import find_contours

    labels = np.asarray(labels)
    out = []
    for k, box in enumerate(ndimage.find_objects(labels.astype(np.int32, copy=False)), start=1):
        if box is None:
            continue
        mask = np.pad(np.asarray(labels[box]) == k, 1).astype(np.float32)
        contours = find_contours(mask, 0.5)
        yx = max(contours, key=len)  # the outer outline of the largest piece
        yx = yx + np.array([box[0].start, box[1].start]) - 1 + 0.5  # undo the pad; pixel centres at +0.5
        out.append((k, yx[:, ::-1].copy()))
    return out


def write_imagej_rois(path: str | Path, pages: Sequence[list[tuple[int, np.ndarray]]]) -> Path:
    """A Fiji/ImageJ ROI set (zip of polygon ROIs named by label; on stacks, each ROI on its slice), atomically."""
    import roifile

    rois = []
    for p, objects in enumerate(pages):
        for k, xy in objects:
            roi = roifile.ImagejRoi.frompoints(xy)
            roi.roitype = roifile.ROI_TYPE.POLYGON
            if len(pages) > 1:
                roi.position = p + 1  # ImageJ slices count from 1
            roi.name = f"{p + 1:04d}-{k:05d}" if len(pages) > 1 else f"{k:05d}"  # slice-label, as Fiji names them
            rois.append(roi)
    with atomic_path(path) as tmp:
        roifile.roiwrite(tmp, rois, mode="w")  # entries named by roi.name; no objects: an empty, valid zip
    return Path(path)


def write_geojson(path: str | Path, pages: Sequence[list[tuple[int, np.ndarray]]]) -> Path:
    """A GeoJSON FeatureCollection of closed polygons, one detection per object (``label``, ``page`` on stacks)."""
    features = []
    for p, objects in enumerate(pages):
        for k, xy in objects:
            ring = np.vstack([xy, xy[:1]]).round(2).tolist()  # GeoJSON rings repeat their first vertex
            props = {"objectType": "detection", "label": int(k)}
            if len(pages) > 1:
                props["page"] = p
            features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                             "properties": props})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return Path(path)


def write_outlines(out_dir: Path, stem: str, fmt: str, label_pages: Sequence[np.ndarray]) -> Path:
    """The outlines of each page's objects in ``fmt``: ``<stem>_rois.zip`` (imagej) or ``<stem>.geojson``."""
    if fmt not in FORMATS:
        raise ValueError(f"outline format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    pages = [polygons(lab) for lab in label_pages]
    if fmt == "imagej":
        return write_imagej_rois(Path(out_dir) / f"{stem}_rois.zip", pages)
    return write_geojson(Path(out_dir) / f"{stem}.geojson", pages)
