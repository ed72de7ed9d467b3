"""Training targets from instance labels: binary, 3-class border / contour, U-Net weight map."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from biounet.data.targets import (balanced_class_weights, binary_target, border_target, contact_target, depth_target,
                                  unet_weight_map)


def _brute_force_weight_map(labels: np.ndarray, w0: float, sigma: float, w_bg: float, w_fg: float,
                            everywhere: bool = False) -> np.ndarray:
    """Eq. 2 of the U-Net paper from explicit pixel-to-pixel distances, no shortcuts."""
    ids = [k for k in np.unique(labels) if k != 0]
    coords = {k: np.argwhere(labels == k) for k in ids}
    out = np.where(labels > 0, w_fg, w_bg).astype(np.float64)
    for y, x in np.argwhere(np.ones_like(labels, bool) if everywhere else labels == 0):
        d = sorted(np.sqrt(((coords[k] - (y, x)) ** 2).sum(1)).min() for k in ids)
        if len(d) >= 2:
            out[y, x] += w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return out


def _two_disks(gap: int, radius: int = 6, size: tuple[int, int] = (40, 60)) -> tuple[np.ndarray, int, int]:
    """Two disks on one row with ``gap`` background columns between them; returns labels and gap columns."""
    labels = np.zeros(size, dtype=np.int32)
    cy, cx1 = size[0] // 2, 15
    cx2 = cx1 + 2 * radius + 1 + gap
    labels[disk((cy, cx1), radius + 0.5, shape=size)] = 1
    labels[disk((cy, cx2), radius + 0.5, shape=size)] = 2
    return labels, cx1 + radius + 1, cx2 - radius  # gap columns: [first, stop)


# --- binary -----------------------------------------------------------------

def test_binary_target_nonzero_and_zero_foreground():
    lab = np.array([[0, 3], [255, 0]])
    np.testing.assert_array_equal(binary_target(lab), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(binary_target(lab, foreground="zero"), [[1, 0], [0, 1]])
    assert binary_target(lab).dtype == np.float32


def test_binary_target_rejects_unknown_foreground():
    with pytest.raises(ValueError, match="foreground"):
        binary_target(np.zeros((2, 2)), foreground="ones")


# --- border3 ----------------------------------------------------------------

def test_border_between_touching_squares_lies_along_shared_edge():
    lab = np.zeros((12, 16), dtype=np.int32)
    lab[2:10, 2:8] = 1
    lab[2:10, 8:14] = 2  # shares the edge between columns 7 and 8
    t = border_target(lab, border_width=1)
    expected = (lab > 0).astype(np.uint8)
    expected[2:10, 7:9] = 2
    np.testing.assert_array_equal(t, expected)
    # width 2 widens the band to two pixels on each side, and nowhere else
    t2 = border_target(lab, border_width=2)
    assert set(np.unique(np.nonzero(t2 == 2)[1])) == {6, 7, 8, 9}


def test_isolated_object_has_no_border_class():
    lab = np.zeros((20, 20), dtype=np.int32)
    lab[disk((10, 10), 6)] = 5
    t = border_target(lab, border_width=2)
    assert t.dtype == np.uint8
    np.testing.assert_array_equal(t, (lab > 0).astype(np.uint8))


def test_border_covers_a_small_gap_but_not_a_wide_one():
    near, _, _ = _two_disks(gap=1)
    far, _, _ = _two_disks(gap=3)
    assert (border_target(near, border_width=2) == 2).any()
    assert not (border_target(far, border_width=2) == 2).any()
    # gap pixels themselves stay background
    assert not (border_target(near, border_width=2)[near == 0]).any()


# --- contour3 ---------------------------------------------------------------

def test_contour_target_is_the_inner_band_of_every_outline():
    lab = np.zeros((12, 16), dtype=np.int32)
    lab[2:10, 2:8] = 1
    lab[2:10, 8:14] = 2  # touching along columns 7 | 8
    t = border_target(lab, border_width=1, contours=True)
    expected = (lab > 0).astype(np.uint8)
    # each object's outermost ring of pixels (4-neighbours of anything else) is class 2
    for k in (1, 2):
        obj = lab == k
        ring = obj & ~ndimage.binary_erosion(obj, border_value=1)
        expected[ring] = 2
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_array_equal(t[3:9, 3:7], 1)  # interior of object 1
    np.testing.assert_array_equal(t[:, 7:9][lab[:, 7:9] > 0], 2)  # the shared edge


def test_contact_class_lies_on_both_sides_of_a_touching_edge_only():
    lab = np.zeros((30, 50), np.int32)
    lab[5:25, 5:25], lab[5:25, 25:45] = 1, 2  # two squares sharing the edge between columns 24 and 25
    t = contact_target(lab, border_fraction=0.0, contact_width=3)
    cols = np.flatnonzero((t == 3).any(axis=0))
    assert list(cols) == [22, 23, 24, 25, 26, 27]  # 3 px deep on each side (centre-to-centre distance <= 3)
    assert (t[:, 5] == 2)[5:25].all() and (t[:, 44] == 2)[5:25].all()  # outlines against background stay 2
    assert (t[15, 8:22] == 1).all()  # the interior is contour3's
    lone = np.zeros((30, 30), np.int32)
    lone[5:25, 5:25] = 1
    np.testing.assert_array_equal(contact_target(lone), border_target(lone, contours=True))  # no neighbour: no 3


def test_contour_target_of_an_isolated_disk_is_its_eroded_interior():
    lab = np.zeros((30, 30), dtype=np.int32)
    lab[disk((15, 15), 8)] = 3
    t = border_target(lab, border_width=2, contours=True)
    # interior = pixels farther than 2 px from every background pixel
    dist = ndimage.distance_transform_edt(lab > 0)
    np.testing.assert_array_equal(t == 1, dist > 2)
    np.testing.assert_array_equal(t == 2, (lab > 0) & (dist <= 2))
    np.testing.assert_array_equal(t == 0, lab == 0)


def test_contour_target_does_not_outline_the_image_edge():
    lab = np.zeros((8, 8), dtype=np.int32)
    lab[:, :4] = 7  # cut by the left, top and bottom edges
    t = border_target(lab, border_width=1, contours=True)
    np.testing.assert_array_equal(t[:, 3], 2)  # its only real outline
    np.testing.assert_array_equal(t[:, :3], 1)


def _random_disks(rng: np.random.Generator, shape=(64, 64), n=8) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):  # later disks overwrite earlier ones: touching and overlapping shapes
        lab[disk(tuple(rng.integers(0, shape[0], 2)), int(rng.integers(2, 12)), shape=shape)] = k
    return lab


def _fixed_band_by_disk_filter(lab: np.ndarray, width: int) -> np.ndarray:
    """Reference: class 2 = object pixels with another value (background included) within a
    ``width`` px disk, the image edge repeated outwards (so it is not an outline)."""
    r = np.arange(-width, width + 1)
    foot = (r[:, None] ** 2 + r[None, :] ** 2) <= width**2
    hi = ndimage.maximum_filter(lab, footprint=foot, mode="nearest")
    lo = ndimage.minimum_filter(lab, footprint=foot, mode="nearest")
    out = (lab > 0).astype(np.uint8)
    out[(lab > 0) & ((hi != lab) | (lo != lab))] = 2
    return out


@pytest.mark.parametrize("width", [1, 2, 3])
def test_relative_band_no_wider_than_the_fixed_one_is_the_fixed_band(width):
    # radii < 13 px, so 0.01 x radius < 1 px and the band is border_width everywhere
    rng = np.random.default_rng(width)
    for _ in range(10):
        lab = _random_disks(rng)
        expected = _fixed_band_by_disk_filter(lab, width)
        np.testing.assert_array_equal(border_target(lab, width, contours=True, border_fraction=0.01), expected)
        np.testing.assert_array_equal(border_target(lab, width, contours=True), expected)


def test_relative_band_leaves_each_disk_a_core_of_the_same_relative_size():
    lab = np.zeros((80, 80), dtype=np.int32)
    lab[disk((20, 20), 16)] = 1
    lab[disk((60, 60), 6)] = 2
    t = border_target(lab, border_width=1, contours=True, border_fraction=0.5)
    for k, r in ((1, 16), (2, 6)):
        core = (t == 1) & (lab == k)
        # the core is a centred disk of about half the radius (pixel radii differ from r by < 1)
        assert ndimage.label(core)[1] == 1
        assert np.pi * (r / 2 - 1) ** 2 <= core.sum() <= np.pi * (r / 2 + 1) ** 2
    np.testing.assert_array_equal(t == 0, lab == 0)


def test_relative_band_cuts_deeper_into_a_big_neighbour():
    lab = np.zeros((40, 60), dtype=np.int32)
    lab[5:35, 5:35] = 1  # 30 px square
    lab[15:25, 35:45] = 2  # 10 px square touching its right side
    t = border_target(lab, border_width=1, contours=True, border_fraction=0.5)
    row = t[20]
    big_band = np.flatnonzero(row[5:35] == 2)  # band pixels of the big square on its middle row
    small_band = np.flatnonzero(row[35:45] == 2)
    # inscribed radius (EDT) 15 and 5: bands 7.5 and 2.5 px deep from each side
    assert big_band.tolist() == [0, 1, 2, 3, 4, 5, 6, 23, 24, 25, 26, 27, 28, 29]
    assert small_band.tolist() == [0, 1, 8, 9]


def test_relative_band_does_not_outline_the_image_edge():
    lab = np.zeros((20, 20), dtype=np.int32)
    lab[:, :10] = 4  # outline only at column 9; inscribed radius 10 -> band 5 px
    t = border_target(lab, border_width=1, contours=True, border_fraction=0.5)
    np.testing.assert_array_equal(t[:, 5:10], 2)
    np.testing.assert_array_equal(t[:, :5], 1)


def test_relative_band_of_an_object_filling_the_image_is_empty():
    lab = np.full((6, 6), 3, dtype=np.int32)  # no outline anywhere: all interior, as with the fixed band
    np.testing.assert_array_equal(border_target(lab, 2, contours=True, border_fraction=0.5), 1)
    np.testing.assert_array_equal(border_target(lab, 2, contours=True), 1)


def test_relative_band_rejects_negative_fraction():
    lab = np.zeros((40, 40), dtype=np.int32)
    lab[5:35, 5:35] = 1
    with pytest.raises(ValueError, match="border_fraction"):
        border_target(lab, contours=True, border_fraction=-0.1)


# --- weight map --------------------------------------------------------------

def test_weight_map_matches_brute_force_reference():
    lab = np.zeros((14, 18), dtype=np.int32)
    lab[2:6, 2:6] = 1
    lab[2:6, 8:11] = 2
    lab[9:13, 4:9] = 3
    lab[10, 15] = 4
    got = unet_weight_map(lab, w0=10.0, sigma=3.0)
    w_bg, w_fg = balanced_class_weights(lab)
    np.testing.assert_allclose(got, _brute_force_weight_map(lab, 10.0, 3.0, w_bg, w_fg), atol=1e-4)


def test_weight_map_with_cropped_neighbourhoods_matches_brute_force():
    # small sigma: each object's distance crop is much smaller than the image
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40), dtype=np.int32)
    for k in range(1, 9):
        y, x = rng.integers(3, 37, size=2)
        lab[disk((y, x), 2.5, shape=lab.shape)] = k
    got = unet_weight_map(lab, w0=5.0, sigma=1.5, class_weights=(1.0, 2.0))
    ref = _brute_force_weight_map(lab, 5.0, 1.5, 1.0, 2.0)
    np.testing.assert_allclose(got, ref, atol=2e-3)  # tolerance of the neighbourhood cut-off


def test_touching_term_on_every_pixel_matches_brute_force_and_marks_both_sides_of_a_cut():
    lab, _, _ = _two_disks(gap=0)  # two disks that touch: no background between them
    lab = lab[5:35, 5:50]
    got = unet_weight_map(lab, w0=10.0, sigma=3.0, class_weights=(1.0, 1.0), touching="all")
    np.testing.assert_allclose(got, _brute_force_weight_map(lab, 10.0, 3.0, 1.0, 1.0, everywhere=True), atol=2e-3)
    paper = unet_weight_map(lab, w0=10.0, sigma=3.0, class_weights=(1.0, 1.0))
    inside = lab > 0
    assert paper[inside].max() == 1.0  # eq. 2 leaves object pixels alone ...
    # ... the "all" variant weighs the pixels where the disks meet most (d1 = 0, d2 = 1), on both disks
    for k in (1, 2):
        assert got[lab == k].max() == pytest.approx(1 + 10.0 * np.exp(-1 / 18), rel=1e-4)
    with pytest.raises(ValueError, match="touching"):
        unet_weight_map(lab, touching="inside")


def test_weight_peaks_in_gap_between_close_disks_and_is_w_c_far_away():
    lab, g0, g1 = _two_disks(gap=2)
    w0, sigma = 10.0, 5.0
    w = unet_weight_map(lab, w0=w0, sigma=sigma)
    w_bg, _ = balanced_class_weights(lab)
    y, x = np.unravel_index(np.argmax(w), w.shape)
    assert lab[y, x] == 0 and g0 <= x < g1
    # gap pixels sit 1 and 2 px from the two disks: w0 * exp(-9 / 50) = 0.84 w0
    assert w.max() == pytest.approx(w_bg + w0 * np.exp(-9 / (2 * sigma**2)), rel=1e-5)
    far = unet_weight_map(np.pad(lab, ((0, 0), (0, 200))), w0=w0, sigma=sigma)
    w_bg_far, _ = balanced_class_weights(np.pad(lab, ((0, 0), (0, 200))))
    assert far[0, -1] == pytest.approx(w_bg_far, abs=1e-6)


def test_weight_map_without_two_objects_is_class_weights_only():
    empty = np.zeros((8, 8), dtype=np.int32)
    np.testing.assert_array_equal(unet_weight_map(empty), np.ones((8, 8), np.float32))
    one = empty.copy()
    one[2:4, 2:4] = 7
    w = unet_weight_map(one, class_weights=(0.5, 3.0))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.where(one > 0, 3.0, 0.5).astype(np.float32))


def test_balanced_class_weights_equalise_classes_and_clip():
    lab = np.zeros((10, 10), dtype=np.int32)
    lab[:2] = 1  # 20 % foreground
    w_bg, w_fg = balanced_class_weights(lab)
    assert (w_bg * 80, w_fg * 20) == pytest.approx((50.0, 50.0))
    lab[:] = 0
    lab[0, 0] = 1  # 1 % foreground would weigh 50
    assert balanced_class_weights(lab, max_weight=10.0)[1] == 10.0


def test_targets_reject_bad_label_images():
    with pytest.raises(ValueError, match="2D"):
        unet_weight_map(np.zeros((2, 3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="integer"):
        border_target(np.zeros((4, 4), dtype=np.float32))


# ---- depth3: soft classes, interior = depth / inscribed radius ------------------------------
def test_depth_target_of_a_square_by_hand():
    lab = np.zeros((7, 7), np.int32)
    lab[1:6, 1:6] = 1  # a 5x5 square: distances to its outline 1, 2, 3 from the rim in; radius 3
    t = depth_target(lab)
    assert t.shape == (3, 7, 7) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(t[0], lab == 0)
    assert t[1, 3, 3] == pytest.approx(1.0) and t[1, 2, 2] == pytest.approx(2 / 3) and t[1, 1, 3] == pytest.approx(1 / 3)
    assert t[2, 1, 1] == pytest.approx(2 / 3) and t[2, 3, 3] == pytest.approx(0.0)


def test_depth_target_thresholded_at_half_is_the_half_radius_contour_target():
    rng = np.random.default_rng(3)
    lab = np.zeros((96, 96), np.int32)
    for k in range(1, 9):  # disks that may touch and overlap (later ones on top)
        lab[disk(tuple(rng.integers(10, 86, 2)), rng.uniform(4, 14), shape=lab.shape)] = k
    soft = depth_target(lab)
    hard = border_target(lab, border_width=0, contours=True, border_fraction=0.5)
    np.testing.assert_array_equal(np.argmax(soft, 0)[soft[1] != 0.5], hard[soft[1] != 0.5])
    # each object's deepest pixels are interior with probability 1, its rim pixels barely
    for k in np.unique(lab)[1:]:
        assert soft[1][lab == k].max() == pytest.approx(1.0)


def test_depth_target_of_an_object_filling_the_patch_is_all_interior():
    t = depth_target(np.full((6, 6), 4, np.int32))
    np.testing.assert_array_equal(t[1], 1.0)
    assert not t[0].any() and not t[2].any()
    np.testing.assert_array_equal(depth_target(np.zeros((5, 5), np.int32))[0], 1.0)
