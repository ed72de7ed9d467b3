"""Overlays: masks are filled, labels outlined, the image stays visible elsewhere."""
import numpy as np

from biounet.overlay import overlay


def test_mask_overlay_colours_only_the_mask():
    img = np.full((10, 10), 100, np.uint8)
    img[0, 0] = 0  # give the stretch a range
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 255
    out = overlay(img, mask)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[3, 3] != out[8, 8]).any()  # inside differs from outside
    assert out[8, 8, 0] == out[8, 8, 1] == out[8, 8, 2]  # outside stays gray


def test_label_outlines_touch_only_object_borders():
    img = np.random.default_rng(0).integers(0, 255, (12, 12), dtype=np.uint8)
    labels = np.zeros((12, 12), np.int32)
    labels[1:6, 1:6] = 1
    labels[6:11, 6:11] = 2
    labels[1:4, 8:11] = 3
    out = overlay(img, labels)
    gray = overlay(img, np.zeros_like(labels) + 0)  # no objects -> plain display image
    changed = (out != gray).any(axis=-1)
    assert changed[1, 1] and changed[6, 6] and not changed[3, 3] and not changed[0, 11]
