"""Outlines: polygons that rasterise back to the objects, Fiji ROI sets and GeoJSON read back."""
import json

import numpy as np
import pytest
import roifile
from skimage.draw import polygon2mask

from biounet.outlines import polygons, write_outlines


def _discs():
    yy, xx = np.mgrid[:60, :80]
    lab = np.zeros((60, 80), np.int32)
    for k, (cy, cx, r) in enumerate([(15, 20, 8), (40, 55, 12), (50, 10, 5)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    lab[0:3, 70:80] = 7  # a bar on the image edge
    return lab


def test_each_polygon_rasterises_back_to_its_object():
    lab = _discs()
    polys = polygons(lab)
    assert [k for k, _ in polys] == [1, 2, 3, 7]
    for k, xy in polys:
        # x/y in the tools' convention (pixel centres at +0.5) -> row/column of pixel centres
        mask = polygon2mask(lab.shape, xy[:, ::-1] - 0.5)
        assert np.array_equal(mask, lab == k), k


def test_imagej_roi_set_reads_back_with_names_and_stack_positions(tmp_path):
    lab = _discs()
    path = write_outlines(tmp_path, "a", "imagej", [lab])
    rois = roifile.roiread(path)
    assert path.name == "a_rois.zip" and [r.name for r in rois] == ["00001", "00002", "00003", "00007"]
    assert all(r.roitype == roifile.ROI_TYPE.POLYGON for r in rois)
    xy = rois[1].coordinates()
    assert np.array_equal(polygon2mask(lab.shape, xy[:, ::-1] - 0.5), lab == 2)
    stack = roifile.roiread(write_outlines(tmp_path, "s", "imagej", [lab, lab[:, ::-1]]))
    assert len(stack) == 8 and [r.position for r in stack] == [1] * 4 + [2] * 4
    empty = write_outlines(tmp_path, "e", "imagej", [np.zeros((5, 5), np.int32)])
    assert empty.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_geojson_is_closed_polygons_with_labels(tmp_path):
    lab = _discs()
    d = json.loads(write_outlines(tmp_path, "a", "geojson", [lab, lab]).read_text())
    assert d["type"] == "FeatureCollection" and len(d["features"]) == 8
    f = d["features"][1]
    ring = f["geometry"]["coordinates"][0]
    assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    assert f["properties"] == {"objectType": "detection", "label": 2, "page": 0}
    assert d["features"][4]["properties"]["page"] == 1
    with pytest.raises(ValueError, match="imagej, geojson"):
        write_outlines(tmp_path, "a", "svg", [lab])
