"""Per-object measurements: hand-computed rows, channel columns, CSV round trip, and predict --measure."""
import csv

import numpy as np
import pytest
import tifffile

from biounet import predict as P
from biounet.config import PostConfig
from biounet.measure import object_table, write_table


def _two_boxes():
    lab = np.zeros((10, 12), np.int32)
    lab[1:4, 1:5] = 1  # 3 x 4 box
    lab[6:9, 6:11] = 3  # 3 x 5 box; label 2 unused
    img = (np.arange(120).reshape(10, 12)).astype(np.uint8)  # value = 12 * row + col
    return lab, img


def test_rows_by_hand_for_two_boxes():
    lab, img = _two_boxes()
    t = object_table(lab, img)
    assert t["label"].tolist() == [1, 3]
    assert t["area"].tolist() == [12, 15]
    assert t["y"].tolist() == [2, 7] and t["x"].tolist() == [2.5, 8]
    # mean of 12 r + c over the box = 12 * mean row + mean col
    assert t["mean_intensity"].tolist() == [12 * 2 + 2.5, 12 * 7 + 8]
    assert t["min_intensity"].tolist() == [12 * 1 + 1, 12 * 6 + 6]
    assert t["max_intensity"].tolist() == [12 * 3 + 4, 12 * 8 + 10]
    assert t["solidity"].tolist() == [1, 1]
    assert np.allclose(t["equivalent_diameter"], np.sqrt(4 * np.array([12, 15]) / np.pi))
    assert t["touches_border"].tolist() == [0, 0]


def test_border_objects_are_flagged_and_pixel_size_scales_lengths_and_area():
    lab, img = _two_boxes()
    lab[0, 1:5] = 1  # box 1 now reaches the top edge
    lab[6:9, 11] = 3  # box 3 the right edge
    lab[4, 5] = 4  # a single inner pixel
    t = object_table(lab, pixel_size=0.5)
    assert t["touches_border"].tolist() == [1, 1, 0]
    assert t["area_um2"].tolist() == [a * 0.25 for a in t["area"]]
    assert t["x_um"].tolist() == [x * 0.5 for x in t["x"]]
    assert np.allclose(t["equivalent_diameter_um"], t["equivalent_diameter"] * 0.5)
    with pytest.raises(ValueError, match="pixel size"):
        object_table(lab, pixel_size=0)


def test_colour_gets_a_column_per_channel_and_gray_saved_as_rgb_gets_one():
    lab, img = _two_boxes()
    rgb = np.dstack([img, 255 - img, img // 2])
    t = object_table(lab, rgb)
    assert t["mean_intensity_1"].tolist() == [255 - 26.5, 255 - 92.0]
    assert t["mean_intensity_2"][0] == pytest.approx(np.mean(img[1:4, 1:5] // 2))
    assert "mean_intensity" not in t
    gray_rgb = object_table(lab, np.dstack([img] * 3))
    assert gray_rgb["mean_intensity"].tolist() == object_table(lab, img)["mean_intensity"].tolist()
    assert "mean_intensity_0" not in gray_rgb
    with pytest.raises(ValueError, match="image size"):
        object_table(lab, img[:5])


def test_csv_round_trip_with_pages_and_an_empty_page(tmp_path):
    lab, img = _two_boxes()
    tables = [object_table(lab, img), object_table(np.zeros_like(lab), img), object_table(lab[::-1], img)]
    path = write_table(tmp_path / "t.csv", tables, pages=True)
    rows = list(csv.DictReader(open(path)))
    assert [r["page"] for r in rows] == ["0", "0", "2", "2"]
    assert [r["label"] for r in rows] == ["1", "3", "1", "3"] and rows[0]["area"] == "12"
    assert float(rows[0]["mean_intensity"]) == 26.5
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left


def test_predict_measure_counts_the_label_image_it_writes_also_when_streamed(tmp_path, monkeypatch):
    from tests.test_predict import make_segmenter

    seg = make_segmenter(base_features=4, depth=2)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (200, 180), dtype=np.uint8)
    # an untrained net: threshold its output at its median so that there are objects to measure
    seg = seg.with_post(mode="instances", threshold=float(np.median(seg.predict(img))), min_size=5)
    tifffile.imwrite(tmp_path / "a.tif", img)
    opts = P.OutputOptions(measure=True)
    for stream in (False, True):
        if stream:
            monkeypatch.setattr(P, "STREAM_PIXELS", 100 * 100)
        out = tmp_path / f"o{stream}"
        labels_path, table_path = P.predict_file(seg, tmp_path / "a.tif", out, opts)
        labels = tifffile.imread(labels_path)
        rows = list(csv.DictReader(open(table_path)))
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        assert len(rows) == len(ids) > 0
        assert [int(r["label"]) for r in rows] == ids.tolist()
        assert [int(float(r["area"])) for r in rows] == areas.tolist()
        assert table_path.name == "a.csv"
