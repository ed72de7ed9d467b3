"""COCO annotations to instance labels: polygons, both RLE forms, crowds, bad files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from biounet.data.coco import (
    coco_labels,
    coco_rle_to_mask,
    decode_coco_counts,
    encode_coco_counts,
    encode_coco_rle,
    load_coco,
    load_coco_image,
    polygon_to_mask,
)
from biounet.io import InputError, write_image

H, W = 6, 8  # not square, so a swapped x/y shows up as a wrong shape or place


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO list-form RLE: runs of 0 then 1 ... over column-major pixels."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _write_coco(path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    doc = {
        "images": images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus"}],
    }
    path.write_text(json.dumps(doc))
    return path


def _masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    poly = np.zeros((H, W), bool)
    poly[1:3, 5:8] = True  # x 5..8, y 1..3 as a polygon
    rle_list = np.zeros((H, W), bool)
    rle_list[4:6, 0:2] = True
    rle_str = np.zeros((H, W), bool)
    rle_str[0, 0] = True  # first pixel set: counts start with a 0-length run
    rle_str[2:5, 3] = True
    return poly, rle_list, rle_str


def test_polygon_list_rle_and_string_rle_become_labels(tmp_path) -> None:
    poly, rle_list, rle_str = _masks()
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[5, 1, 8, 1, 8, 3, 5, 3]]},
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": _uncompressed_rle(rle_list)},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": encode_coco_rle(rle_str)},
    ]
    (item,) = load_coco(_write_coco(tmp_path / "ann.json", anns))
    assert (item.height, item.width, item.n_crowd) == (H, W, 0)
    assert item.image_path == tmp_path / "a.png"
    labels = coco_labels(item)
    assert labels.shape == (H, W) and labels.dtype == np.int32
    expected = np.zeros((H, W), np.int32)
    expected[poly], expected[rle_list], expected[rle_str] = 1, 2, 3
    np.testing.assert_array_equal(labels, expected)
    assert [a.id for a in item.annotations] == [10, 11, 12]


def test_polygon_uses_pixel_centres_and_xy_order() -> None:
    # A box from (x=0, y=0) to (x=3, y=2) covers 3 columns and 2 rows exactly.
    mask = polygon_to_mask([0, 0, 3, 0, 3, 2, 0, 2], (H, W))
    expected = np.zeros((H, W), bool)
    expected[0:2, 0:3] = True
    np.testing.assert_array_equal(mask, expected)
    # Half-pixel vertices: only pixels whose centres are inside.
    # x 1.6..3.4 holds only column 2's centre (2.5); y 0.4..1.6 holds rows 0 and 1.
    mask = polygon_to_mask([1.6, 0.4, 3.4, 0.4, 3.4, 1.6, 1.6, 1.6], (H, W))
    assert np.argwhere(mask).tolist() == [[0, 2], [1, 2]]


def test_string_rle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        shape = tuple(int(v) for v in rng.integers(1, 30, size=2))
        mask = rng.random(shape) < rng.random()
        rle = encode_coco_rle(mask)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(coco_rle_to_mask(rle), mask)


def test_string_rle_known_values() -> None:
    # Hand-encoded with pycocotools' rules: counts after the third are deltas
    # from two before (1 - 2 = -1 -> 'O', sign bit set), 40 needs two chunks.
    assert encode_coco_counts([0, 4]) == "04"
    assert encode_coco_counts([1, 2, 3, 1]) == "123O"
    assert decode_coco_counts("123O") == [1, 2, 3, 1]
    assert decode_coco_counts(encode_coco_counts([40, 3, 1000, 7, 5])) == [40, 3, 1000, 7, 5]
    np.testing.assert_array_equal(coco_rle_to_mask({"size": [2, 2], "counts": "04"}), np.ones((2, 2), bool))
    with pytest.raises(ValueError):
        decode_coco_counts("1\x7f")
    with pytest.raises(ValueError):
        decode_coco_counts("o")  # continuation bit on the last character


def test_crowd_annotations_are_skipped_and_counted(tmp_path) -> None:
    poly, rle_list, _ = _masks()
    anns = [
        {"id": 1, "image_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(rle_list)},
        {"id": 2, "image_id": 1, "iscrowd": 0, "segmentation": [[5, 1, 8, 1, 8, 3, 5, 3]]},
    ]
    (item,) = load_coco(_write_coco(tmp_path / "ann.json", anns))
    assert item.n_crowd == 1
    np.testing.assert_array_equal(coco_labels(item), poly.astype(np.int32))


def test_image_without_annotations_and_image_root(tmp_path) -> None:
    images = [{"id": 7, "file_name": "b.png", "height": 3, "width": 4}]
    write_image(tmp_path / "imgs" / "b.png", np.full((3, 4), 9, np.uint8))
    (item,) = load_coco(_write_coco(tmp_path / "ann.json", [], images), image_root=tmp_path / "imgs")
    assert coco_labels(item).shape == (3, 4) and not coco_labels(item).any()
    assert load_coco_image(item).shape == (3, 4)


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [H, W], "counts": [1, 2]}, "sum"),
        ({"size": [H + 1, W], "counts": [(H + 1) * W]}, "differs from image size"),
        ([[1, 2, 3]], "polygon"),
        ({"size": [H, W], "counts": "1\x7f"}, "invalid character"),
        ("nope", "neither"),
    ],
)
def test_bad_segmentation_names_json_and_annotation(tmp_path, segmentation, message) -> None:
    path = _write_coco(tmp_path / "ann.json", [{"id": 42, "image_id": 1, "segmentation": segmentation}])
    with pytest.raises(InputError, match=rf"ann\.json: annotation 42: .*{message}"):
        load_coco(path)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_coco(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json"):
        load_coco(tmp_path / "broken.json")
    path = _write_coco(tmp_path / "ann.json", [{"id": 3, "image_id": 99, "segmentation": []}])
    with pytest.raises(InputError, match="unknown image id 99"):
        load_coco(path)


def test_a_missing_image_says_where_file_names_are_looked_up(tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    write_image(tmp_path / "imgs" / "a.png", np.zeros((H, W), np.uint8))
    path = _write_coco(tmp_path / "ann.json", [{"id": 1, "image_id": 1, "segmentation": [[5, 1, 8, 1, 8, 3, 5, 3]]}])
    item, = load_coco(path)  # a.png beside the JSON: not there
    with pytest.raises(InputError, match=r"a\.png: no such file \(a COCO file_name is looked up beside the JSON"):
        load_coco_image(item)
    item, = load_coco(path, tmp_path / "imgs")  # the image folder named: found
    assert load_coco_image(item).shape == (H, W)
